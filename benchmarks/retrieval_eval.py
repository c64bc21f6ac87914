r"""Time of the full two-stage retrieval evaluation (spec §4.1) with the tiny model.

  python benchmarks/retrieval_eval.py                      # 1k images, 5k captions, k = 64 / 128
  python benchmarks/retrieval_eval.py --num_images=100     # a quick look

Random inputs of the ShapesWorld tiny model's shapes (configs/mvp_tiny.py: hidden 128, 2+2+2
layers, text 20+6, 8 tags, 7 regions of 134 dims) and a randomly initialised `RetrievalModel`:
the time does not depend on the weights. Every caption is encoded once, every image once, then
5k x 64 (text->image) + 1k x 128 (image->text) = 448k pairs go through the cross-modal encoder.
The evaluator is built as the trainer builds it, `evaluators.from_config` on an `EvalContext`.
Prints the seconds of a first run (with compilation) and of a second run; the evaluator logs each
phase's progress with an ETA (`--alsologtostderr`).
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from configs import mvp_tiny  # pylint: disable=g-import-not-at-top
from mvp_jax import data  # pylint: disable=g-import-not-at-top
from mvp_jax import evaluators  # pylint: disable=g-import-not-at-top
from mvp_jax import model as model_lib  # pylint: disable=g-import-not-at-top
from mvp_jax import sharding  # pylint: disable=g-import-not-at-top
from mvp_jax.config import ModelConfig  # pylint: disable=g-import-not-at-top
from mvp_jax.downstream import models  # pylint: disable=g-import-not-at-top

_NUM_IMAGES = flags.DEFINE_integer('num_images', 1000, 'Images in the evaluation set.')
_CAPTIONS = flags.DEFINE_integer('captions_per_image', 5, 'Captions per image.')
_TOP_K_IMAGES = flags.DEFINE_integer('top_k_images', 64, 'Images re-scored per caption.')
_TOP_K_TEXTS = flags.DEFINE_integer('top_k_texts', 128, 'Captions re-scored per image.')
_BATCH = flags.DEFINE_integer('batch_size', 250, 'Rows per encoding batch.')
_SCORE_BATCH = flags.DEFINE_integer('score_batch_size', 1024, 'Pairs per rerank chunk.')


def make_batches(cfg: ModelConfig, lengths, num_images: int, captions: int, batch_size: int):
  """(image, caption) rows grouped by image_index, as padded host batches."""
  rng = np.random.default_rng(0)
  text, tags, regions = (lengths.max_seq_length + lengths.max_phrases, lengths.max_tag_length,
                         lengths.max_img_seq_length)
  n = num_images * captions
  image_of_row = np.repeat(np.arange(num_images), captions)
  rows = dict(
      input_ids_a=rng.integers(1, cfg.vocab_size, (n, text)).astype(np.int32),
      attention_mask_a=np.ones((n, text), np.int32),
      token_type_ids_a=np.zeros((n, text), np.int32),
      input_ids_b=rng.integers(1, cfg.vocab_size, (num_images, tags)).astype(np.int32)[
          image_of_row],
      token_type_ids_b=np.ones((n, tags), np.int32),
      attention_mask_b=np.ones((n, tags + regions), np.int32),
      img_feats=rng.normal(size=(num_images, regions, cfg.region_feature_dim)).astype(
          np.float32)[image_of_row],
      image_index=image_of_row.astype(np.int32), example_valid=np.ones(n, np.int32))
  padded = -(-n // batch_size) * batch_size
  rows = {k: np.concatenate([v, np.repeat(v[:1], padded - n, 0)]) for k, v in rows.items()}
  rows['example_valid'][n:] = 0
  return [{k: v[i:i + batch_size] for k, v in rows.items()} for i in range(0, padded, batch_size)]


def main(argv):
  del argv
  config = mvp_tiny.get_config()
  cfg = ModelConfig.from_dict(dict(config.model, vocab_size=300, word_vocab_size=200,
                                   dropout_rate=0.0, attention_dropout_rate=0.0))
  batches = make_batches(cfg, data.lengths(config.data), _NUM_IMAGES.value, _CAPTIONS.value,
                         _BATCH.value)
  mesh = sharding.create_mesh((-1, 1, 1))
  to_device = lambda b: data.to_global(b, sharding.batch_sharding(mesh))
  model = models.RetrievalModel(cfg)
  params = model.init(jax.random.PRNGKey(0), model_lib.dummy_batch(cfg))['params']
  params = jax.tree_util.tree_map(np.asarray, nn.unbox(params))
  context = evaluators.EvalContext(model=model, task='retrieval',
                                   batches=lambda split, corrupt: batches, to_device=to_device,
                                   workdir='/tmp/retrieval_eval_benchmark')
  (evaluator,) = evaluators.from_config(
      {'retrieval': dict(type='retrieval', split='test', top_k_images=_TOP_K_IMAGES.value,
                         top_k_texts=_TOP_K_TEXTS.value, score_batch_size=_SCORE_BATCH.value)},
      context)
  print(f'{_NUM_IMAGES.value} images, {_NUM_IMAGES.value * _CAPTIONS.value} captions, '
        f'k = {_TOP_K_IMAGES.value} / {_TOP_K_TEXTS.value}, {jax.device_count()} '
        f'{jax.devices()[0].platform} device(s)')
  for name in ('first run (with compilation)', 'second run'):
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      results = dict(evaluator.run(params))
    print(f'{name}: {time.perf_counter() - start:.1f} s '
          f'(t2i R@1 {results["test/retrieval/t2i_R@1"]:.3f}, chance-level weights)')


if __name__ == '__main__':
  app.run(main)
