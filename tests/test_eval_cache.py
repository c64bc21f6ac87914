"""Evaluation batches held with each image's visual columns once (`evaluators/cache.py`): the
held batches read back equal to the plain ones, keep one feature row per distinct image instead
of one per caption, give the same retrieval ranks, and are what the trainer hands evaluators."""

import jax
import numpy as np
import pytest

from mvp_jax import data
from mvp_jax import evaluators
from mvp_jax import sharding
from mvp_jax import train
from mvp_jax.evaluators import cache

import retrieval_fixtures as fx  # pylint: disable=g-bad-import-order
import test_train  # pylint: disable=g-bad-import-order


def test_held_batches_equal_the_plain_ones_with_one_row_per_image():
  plain = fx.as_batches(fx.make_rows(images=13, captions=3, seed=2), 4)  # 39 rows + 1 padding
  held = cache.hold(iter(plain), where='test')
  assert cache.image_rows_held(plain) == 40  # a list of batches: one image copy per caption
  assert cache.image_rows_held(held) == 13  # the padding row is a copy of a real row
  for a, b in zip(plain, held):
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(np.asarray(b[key]), a[key], err_msg=key)
      np.testing.assert_array_equal(b[key][1], a[key][1], err_msg=key)
  with pytest.raises(ValueError, match='split/val: the evaluation split yielded no batch'):
    cache.hold(iter([]), where='split/val')


def test_rows_that_differ_are_not_shared():
  plain = fx.as_batches(fx.make_rows(images=3, captions=2, seed=3), 6)
  plain[0]['input_ids_b'][0, 0] += 1  # one caption row's tags differ (as corrupted tags do)
  held = cache.hold(iter(plain))
  assert cache.image_rows_held(held) == 4
  np.testing.assert_array_equal(np.asarray(held[0]['input_ids_b']), plain[0]['input_ids_b'])


def test_retrieval_ranks_on_held_batches_equal_plain_batches():
  mesh = sharding.create_mesh((2, 1, 1))
  to_device = lambda b: data.to_global(b, sharding.batch_sharding(mesh))
  plain = fx.as_batches(fx.make_rows(images=6, captions=2, seed=4), 4)
  model, params = fx.make_model('retrieval', seed=3)
  ranks = []
  for batches in (plain, cache.hold(iter(plain))):
    evaluator = fx.make_evaluator(model, 'retrieval', batches, to_device, top_k_images=3,
                                  top_k_texts=3)
    with jax.set_mesh(mesh):
      ranks.append(evaluator.ranks(params))
  for key, value in ranks[0].items():
    np.testing.assert_array_equal(ranks[1][key], value, err_msg=key)


def test_trainer_holds_each_image_once(tmp_path, monkeypatch):
  """The trainer's evaluation batches of a pre-training run's clean val split (the retrieval
  evaluator's): one feature row per distinct image, fewer than the caption rows."""
  config = test_train.smoke_config(str(tmp_path / "data"), total_steps=2)
  config.evals = {'retrieval': dict(type='retrieval', split='val', top_k_images=2,
                                    top_k_texts=2, score_batch_size=8)}
  seen = {}

  class Stop(Exception):
    pass

  def capture(eval_config, context):
    seen['batches'] = context.batches('val', False)
    raise Stop

  monkeypatch.setattr(evaluators, 'from_config', capture)
  with pytest.raises(Stop):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  batches = seen['batches']
  rows = sum(int(np.asarray(b['example_valid']).sum()) for b in batches)
  images = len({int(i) for b in batches
                for i, v in zip(b['image_index'], b['example_valid']) if v})
  assert rows > images
  assert cache.image_rows_held(batches) == images
