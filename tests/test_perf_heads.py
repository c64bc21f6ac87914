"""Issue 15 item 1: the MLM and concept heads on masked positions only give the full-position
losses and gradients; slots are sized by a binomial bound and overflow is dropped and counted."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import losses
from mvp_jax import model as model_lib

BATCH, TEXT, TAGS, REGIONS = 4, 10, 6, 4
CONFIG = config_lib.tiny(region_feature_dim=16, num_text_layers=1, num_visual_layers=1,
                         num_cross_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
MASKED = CONFIG.replace(prediction_positions='masked')


def _batch(label_rate=0.3, seed=0):
  rng = np.random.RandomState(seed)
  text_mask = np.arange(TEXT)[None] < np.array([10, 7, 6, 9])[:, None]
  region_mask = np.arange(REGIONS)[None] < np.array([4, 3, 4, 2])[:, None]
  words = rng.randint(0, CONFIG.word_vocab_size, (BATCH, TEXT))
  tags = rng.randint(0, CONFIG.word_vocab_size, (BATCH, TAGS))
  labels_a = np.where(text_mask & (rng.uniform(size=(BATCH, TEXT)) < label_rate), words, -1)
  labels_b = np.where(rng.uniform(size=(BATCH, TAGS)) < label_rate, tags, -1)
  labels_a[1] = -1  # a row without any label
  return dict(
      input_ids_a=jnp.asarray(words * text_mask, jnp.int32),
      token_type_ids_a=jnp.zeros((BATCH, TEXT), jnp.int32),
      attention_mask_a=jnp.asarray(text_mask, jnp.int32),
      input_ids_b=jnp.asarray(tags, jnp.int32), token_type_ids_b=jnp.ones((BATCH, TAGS), jnp.int32),
      attention_mask_b=jnp.asarray(np.concatenate([np.ones((BATCH, TAGS)), region_mask], 1),
                                   jnp.int32),
      img_feats=jnp.asarray(rng.normal(size=(BATCH, REGIONS, 16)), jnp.float32),
      mlm_labels_a=jnp.asarray(labels_a, jnp.int32), mlm_labels_b=jnp.asarray(labels_b, jnp.int32))


@pytest.fixture(scope='module')
def params():
  return nn.unbox(model_lib.init_params(CONFIG, jax.random.PRNGKey(0),
                                        model_lib.dummy_batch(CONFIG, BATCH, TEXT, TAGS, REGIONS)))


def _head_losses(config, params, batch):
  outputs = model_lib.MVPPretrainingModel(config).apply({'params': params}, batch)
  mlm, mlm_metrics = losses.masked_language_loss(*model_lib.text_predictions(outputs, batch))
  mcr, mcr_metrics = losses.masked_concept_loss(*model_lib.concept_predictions(outputs, batch))
  return mlm + mcr, (mlm, mcr, mlm_metrics, mcr_metrics, outputs)


def test_masked_heads_equal_full_heads(params):
  batch = _batch()
  grad_fn = lambda config: jax.jit(jax.value_and_grad(
      lambda p: _head_losses(config, p, batch), has_aux=True))
  (_, (mlm_full, mcr_full, mlm_m, mcr_m, full)), g_full = grad_fn(CONFIG)(params)
  (_, (mlm_masked, mcr_masked, mlm_mm, mcr_mm, masked)), g_masked = grad_fn(MASKED)(params)
  assert 'mlm_logits' in full and 'mlm_logits' not in masked
  assert masked['mlm_gathered_logits'].shape == (BATCH, model_lib.max_predictions_for(TEXT, 0.15),
                                                 CONFIG.word_vocab_size)
  assert masked['vis_mlm_gathered_logits'].shape[1] == model_lib.max_predictions_for(TAGS, 0.15)
  assert int(masked['mlm_dropped']) == int(masked['vis_mlm_dropped']) == 0
  assert float(mlm_full) > 1.0 and float(mcr_full) > 1.0
  np.testing.assert_allclose(mlm_masked, mlm_full, rtol=0, atol=1e-6)
  np.testing.assert_allclose(mcr_masked, mcr_full, rtol=0, atol=1e-6)
  for name in ('count', 'correct'):
    assert int(mlm_m[name]) == int(mlm_mm[name]) and int(mcr_m[name]) == int(mcr_mm[name])
  assert int(mlm_m['count']) == int((batch['mlm_labels_a'] >= 0).sum()) > 0
  # Gathered logits are the full logits at the gathered positions.
  positions = np.asarray(masked['mlm_positions'])
  picked = np.take_along_axis(np.asarray(full['mlm_logits']), positions[..., None], axis=1)
  used = np.asarray(masked['mlm_gathered_labels']) >= 0
  np.testing.assert_allclose(np.asarray(masked['mlm_gathered_logits'])[used], picked[used],
                             atol=1e-5, rtol=0)
  flat_full = jax.tree_util.tree_leaves_with_path(g_full)
  flat_masked = dict(jax.tree_util.tree_leaves_with_path(g_masked))
  for path, grad in flat_full:
    np.testing.assert_allclose(flat_masked[path], grad, atol=1e-6, rtol=0, err_msg=str(path))


def test_overflow_is_dropped_and_counted(params):
  batch = _batch(label_rate=0.8, seed=1)
  config = MASKED.replace(max_predictions_a=2, max_predictions_b=3)
  _, (mlm, mcr, _, _, outputs) = jax.jit(lambda p: _head_losses(config, p, batch))(params)
  labels_a, labels_b = np.asarray(batch['mlm_labels_a']), np.asarray(batch['mlm_labels_b'])
  per_row = (labels_a >= 0).sum(1)
  assert int(outputs['mlm_dropped']) == int(np.maximum(per_row - 2, 0).sum()) > 0
  assert int(outputs['vis_mlm_dropped']) == int(np.maximum((labels_b >= 0).sum(1) - 3, 0).sum())
  # What is kept: the first 2 labelled positions of each row, in order.
  kept = np.where(np.cumsum(labels_a >= 0, axis=1) <= 2, labels_a, -1)
  np.testing.assert_array_equal(np.asarray(outputs['mlm_gathered_labels']),
                                np.stack([row[row >= 0].tolist() + [-1] * (2 - (row >= 0).sum())
                                          for row in kept]))
  reference = dict(batch, mlm_labels_a=jnp.asarray(kept))
  mlm_full, _ = losses.masked_language_loss(*model_lib.text_predictions(
      model_lib.MVPPretrainingModel(CONFIG).apply({'params': params}, reference), reference))
  np.testing.assert_allclose(mlm, mlm_full, atol=1e-6)


def test_slot_bound_is_the_binomial_tail():
  for length, prob in ((40, 0.15), (20, 0.15), (128, 0.15), (10, 0.5)):
    slots = model_lib.max_predictions_for(length, prob)
    tail = lambda k: sum(math.comb(length, j) * prob ** j * (1 - prob) ** (length - j)
                         for j in range(k + 1, length + 1))
    assert tail(slots) <= 1e-6 < tail(slots - 1), (length, prob, slots)
  assert model_lib.max_predictions_for(40, 0.15) == 19
  assert model_lib.max_predictions_for(20, 0.15) == 12


def test_masked_mode_needs_labels(params):
  batch = _batch()
  del batch['mlm_labels_a']
  with pytest.raises(ValueError, match="needs 'mlm_labels_a'"):
    model_lib.MVPPretrainingModel(MASKED).apply({'params': params}, batch)
  with pytest.raises(ValueError, match='prediction_positions must be one of'):
    CONFIG.replace(prediction_positions='some')
