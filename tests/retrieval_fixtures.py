"""Retrieval test data shared by the retrieval tests and the multi-process worker: (caption, image)
rows, padded host batches, tiny random models and an evaluator built through `from_config`.
Imports no input pipeline (the multi-process worker starts fast)."""

import flax.linen as nn
import jax
import numpy as np

from mvp_jax import config as config_lib
from mvp_jax import evaluators
from mvp_jax import model as model_lib
from mvp_jax.downstream import models

CFG = config_lib.tiny(num_text_layers=1, num_visual_layers=1, num_cross_layers=1,
                      region_feature_dim=16)
IMAGES, CAPTIONS_PER_IMAGE, TEXT, TAGS, REGIONS, ROWS = 5, 2, 5, 3, 4, 4


def make_rows(images=IMAGES, captions=CAPTIONS_PER_IMAGE, seed=0, tags=TAGS):
  """`images` images with `captions` captions each, rows in a shuffled order (unpadded)."""
  rng = np.random.default_rng(seed)
  n = images * captions
  image_of_row = np.repeat(np.arange(images), captions)
  rows = dict(
      input_ids_a=rng.integers(1, CFG.vocab_size, (n, TEXT)).astype(np.int32),
      attention_mask_a=(np.arange(TEXT)[None] < rng.integers(3, TEXT + 1, (n, 1))).astype(
          np.int32),
      token_type_ids_a=np.zeros((n, TEXT), np.int32),
      input_ids_b=rng.integers(1, CFG.vocab_size, (images, tags)).astype(np.int32)[image_of_row],
      token_type_ids_b=np.ones((n, tags), np.int32),
      attention_mask_b=np.ones((n, tags + REGIONS), np.int32),
      img_feats=rng.normal(size=(images, REGIONS, CFG.region_feature_dim)).astype(
          np.float32)[image_of_row],
      image_index=image_of_row.astype(np.int32), example_valid=np.ones(n, np.int32),
      example_index=np.arange(n, dtype=np.int64))
  order = rng.permutation(n)  # captions of an image are spread over batches
  return {k: v[order] for k, v in rows.items()}


def as_batches(rows, size=ROWS):
  """Host batches of `size` rows, as the trainer caches them: the last is padded with copies of
  row 0 whose example_valid is 0."""
  n = len(rows['example_valid'])
  padded = -(-n // size) * size
  rows = {k: np.concatenate([v, np.repeat(v[:1], padded - n, 0)]) for k, v in rows.items()}
  rows['example_valid'][n:] = 0
  return [{k: v[i:i + size] for k, v in rows.items()} for i in range(0, padded, size)]


def make_model(task, seed=1):
  if task == 'pretrain':
    model = model_lib.MVPPretrainingModel(CFG)
    return model, nn.unbox(model_lib.init_params(CFG, jax.random.PRNGKey(seed)))
  model = models.RetrievalModel(CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), model_lib.dummy_batch(CFG))['params'])
  params['classifier']['kernel'] = params['classifier']['kernel'] * 50  # spread the scores
  return model, params


def make_evaluator(model, task, batches, to_device, calls=None, **options):
  def get_batches(split, corrupt):
    if calls is not None:
      calls.append((split, corrupt))
    return batches
  context = evaluators.EvalContext(model=model, task=task, batches=get_batches,
                                   to_device=to_device, workdir='/nonexistent')
  (evaluator,) = evaluators.from_config(
      {'ret': dict(type='retrieval', split='val', score_batch_size=8, **options)}, context)
  return evaluator


def uneven_host_batches(size=ROWS):
  """Two hosts' batches: host 0 holds one caption of each of 8 images over 2 batches plus a
  padding-only third, host 1 five more captions of images 0 and 1 only (2 batches)."""
  rows = make_rows(images=8, captions=1, seed=5)
  extra = make_rows(images=8, captions=1, seed=6)
  extra = {k: v[np.isin(extra['image_index'], [0, 1])] for k, v in extra.items()}
  host = [as_batches(rows, size), as_batches({k: np.concatenate([extra[k]] * 3)[:5]
                                              for k in extra}, size)]
  host[0] += as_batches({k: v[:3] for k, v in rows.items()}, size)
  host[0][-1]['example_valid'][:] = 0
  return host
