"""A whole training run from pixels (`configs/mvp_tiny_pixels.py:smoke`), interrupted and resumed.

The smoke config's own run is the config's test: ShapesWorld generated into the workdir, the tiny
ViT trained in the same step as MVPTR with random-resized crop + flip on, every evaluator at the
end. SIGTERM during step 2 stops it with a checkpoint of step 2; the same config run again
finishes it, and the whole final checkpoint (step, params, Adam moments, rng, iterator position)
equals, bit for bit, that of a run that was never interrupted.

Three whole runs (reference, interrupted, resumed) each trace the pixel pipeline and the model
again, about 50 s of CPU: too slow for the default suite, so it runs in CI's slow step
(`-m slow`).
"""

import math

import jax
import numpy as np
import pytest

from configs import mvp_tiny_pixels
from input_pipeline import image_ops
from input_pipeline import ops
from input_pipeline import storage
from mvp_jax import checkpointing
from mvp_jax import train
import test_train  # pylint: disable=g-bad-import-order


def unaugmented_pixels(config, directory: str, split: str) -> np.ndarray:
  """float32 [N, S, S, 3]: each image of `split` as the evaluation pipeline gives it (no crop,
  no flip), indexed by the batches' `image_index`."""
  records = storage.read_dataset(directory, split).map(
      lambda r: {'png': r['image_png'], 'id': r['image_id']})
  return np.stack([image_ops.eval_pixels(image_ops.decode(r['png'], r['id']).numpy(),
                                         config.data.image_size, config.data.image_norm)
                   for r in records])


def assert_same_tree(a, b, where: str) -> None:
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), where
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=f'{where}{jax.tree_util.keystr(path)}')


@pytest.mark.slow
def test_pixel_smoke_run_resumes_after_sigterm_bit_for_bit(tmp_path, monkeypatch):
  config = mvp_tiny_pixels.get_config('smoke')
  assert config.data.pixels and config.data.get('augment') is None  # the task's default ...
  assert 'random_crop' in ops.PIXEL_AUGMENT['pretrain'] and 'flip_lr' in ops.PIXEL_AUGMENT[
      'pretrain']  # ... is random-resized crop + flip
  straight_dir, resumed_dir = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  # The reference run evaluates nothing: evaluation must not move the training state either.
  reference = config.copy_and_resolve_references()
  reference.evals = {}
  train.train_and_evaluate(reference, straight_dir)

  seen = []
  stop_sigterm = test_train.sigterm_during_step(monkeypatch, 2, seen)
  interrupted = train.train_and_evaluate(config, resumed_dir)
  stop_sigterm()
  assert interrupted['preempted_at_step'] == 2 and interrupted['final_step'] == 2
  assert checkpointing.read_checkpoint(resumed_dir, data=False)[2] == 2  # saved on the way out
  resumed = train.train_and_evaluate(config, resumed_dir)
  assert resumed['final_step'] == config.total_steps == 4

  # The smoke run trains and evaluates: finite losses, every evaluator reported.
  for name in ('loss', 'loss_mlm', 'loss_mcr', 'loss_itc', 'loss_itm', 'loss_wpg'):
    assert math.isfinite(resumed[f'train/{name}']), name
  for name in ('retrieval/t2i_R@1', 'val/mlm_accuracy', 'val/grounding_accuracy'):
    assert 0.0 <= resumed[name] <= 1.0, name

  # Augmentation is on in this run: the pixels the two steps trained on are not the plain
  # resized images (a crop or a flip of every example).
  plain = unaugmented_pixels(config, f'{resumed_dir}/shapesworld', config.data.train_split)
  assert len(seen) == 2 and seen[0]['pixels'].shape == (4, 32, 32, 3)
  for batch in seen:
    for pixels, image in zip(batch['pixels'], batch['image_index']):
      assert np.abs(pixels - plain[image]).max() > 0.1, image

  straight_state, straight_data, straight_step = checkpointing.read_checkpoint(straight_dir)
  resumed_state, resumed_data, resumed_step = checkpointing.read_checkpoint(resumed_dir)
  assert straight_step == resumed_step == 4
  assert set(straight_state) == {'step', 'params', 'opt_state', 'rng'}
  assert_same_tree(straight_state, resumed_state, 'state')
  assert straight_data == resumed_data
