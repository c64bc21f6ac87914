"""The update step and optimiser: local vs global negatives, accumulation, decay mask, schedule."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mvp_jax import config as config_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib

CONFIG = config_lib.tiny(region_feature_dim=12, dropout_rate=0.0, attention_dropout_rate=0.0,
                         vocab_size=60, word_vocab_size=40, num_text_layers=1,
                         num_visual_layers=1, num_cross_layers=1, hidden_size=16, mlp_dim=32)
BATCH, TEXT, TAGS, REGIONS = 8, 6, 3, 4


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = lambda shape: rng.integers(5, CONFIG.word_vocab_size, shape).astype(np.int32)
  return dict(
      input_ids_a=ids((BATCH, TEXT)), attention_mask_a=np.ones((BATCH, TEXT), np.int32),
      token_type_ids_a=np.zeros((BATCH, TEXT), np.int32), input_ids_b=ids((BATCH, TAGS)),
      token_type_ids_b=np.ones((BATCH, TAGS), np.int32),
      attention_mask_b=np.ones((BATCH, TAGS + REGIONS), np.int32),
      img_feats=rng.standard_normal((BATCH, REGIONS, 12)).astype(np.float32),
      phrase_index=np.tile([[3, 5]], (BATCH, 1)).astype(np.int32),
      img_index=np.tile([[TEXT, TEXT + REGIONS]], (BATCH, 1)).astype(np.int32),
      mlm_labels_a=np.where(rng.random((BATCH, TEXT)) < 0.3, ids((BATCH, TEXT)), -1),
      mlm_labels_b=np.where(rng.random((BATCH, TAGS)) < 0.3, ids((BATCH, TAGS)), -1))


def optimizer_config(**overrides):
  values = dict(lr=1e-3, warmup_steps=0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
                grad_clip_norm=0.0, scale_lr_by_batch=False, reference_batch_size=1024)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def test_local_negatives_are_per_shard_losses():
  """ITC with G local groups == mean of the G shard-sized batches' own ITC (per-device)."""
  model = model_lib.MVPPretrainingModel(CONFIG)
  params = model_lib.init_params(CONFIG, jax.random.PRNGKey(0))
  batch = make_batch()
  rng = jax.random.PRNGKey(3)

  def metrics_fn(groups):  # stage 1 (MCR + ITC): the ITC part without the cross encoder
    return jax.jit(lambda p, b: train_step_lib.compute_losses(
        model, p, b, rng, stage=1, weights={}, deterministic=True, num_groups=groups)[1])

  local = metrics_fn(4)(params, batch)
  per_shard_fn = metrics_fn(1)
  per_shard = [per_shard_fn(params, {k: v[2 * s:2 * s + 2] for k, v in batch.items()})['loss_itc']
               for s in range(4)]
  np.testing.assert_allclose(local['loss_itc'], np.mean(per_shard), rtol=1e-5)
  global_ = per_shard_fn(params, batch)
  assert abs(float(global_['loss_itc']) - float(local['loss_itc'])) > 1e-3
  # ITM negatives with local groups pair samples of the same shard only.
  outputs = jax.jit(lambda p, b: model.apply({'params': p}, b, hard_negatives=rng,
                                             negative_groups=4))(params, batch)
  np.testing.assert_array_equal(outputs['hard_txt_index'] // 2, outputs['hard_img_index'] // 2)
  assert np.all(outputs['hard_txt_index'] != outputs['hard_img_index'])


def test_gradient_accumulation_matches_per_group_batch():
  """accum=2 (ITC per micro-batch) == one step with 2 local groups: same update."""
  model = model_lib.MVPPretrainingModel(CONFIG)
  params = model_lib.init_params(CONFIG, jax.random.PRNGKey(0))
  optimizer = optim.create_optimizer(optimizer_config(), 10, BATCH)
  schedule = optim.learning_rate_schedule(optimizer_config(), 10, BATCH)
  batch = make_batch(1)
  weights = dict(mcr=0.0, mlm=0.0, itm=0.0, wpg=0.0, itc=1.0)
  states = []
  for accum, groups in ((2, 1), (1, 2)):
    state = train_step_lib.TrainState(step=jnp.ones((), jnp.int32), params=params,
                                      opt_state=optimizer.init(params),
                                      rng=jax.random.PRNGKey(5))
    step = train_step_lib.make_train_step(model, optimizer, schedule, stage=2,
                                          num_groups=groups, weights=weights,
                                          grad_accum_steps=accum)
    new_state, metrics = jax.jit(step)(state, batch)
    states.append((new_state, metrics))
  (a, ma), (b, mb) = states
  np.testing.assert_allclose(ma['loss_itc'], mb['loss_itc'], rtol=1e-5)
  np.testing.assert_allclose(ma['grad_norm'], mb['grad_norm'], rtol=1e-4)
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert int(ma['itc_count']) == int(mb['itc_count']) == 2 * BATCH


def test_decay_mask_excludes_biases_and_layernorm():
  params = model_lib.init_params(CONFIG, jax.random.PRNGKey(0))
  mask = optim.decay_mask(params)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  mask = nn.unbox(mask)
  assert mask['backbone']['text_encoder']['layer_0']['intermediate']['kernel']
  assert not mask['backbone']['text_encoder']['layer_0']['intermediate']['bias']
  assert not mask['backbone']['text_encoder']['layer_0']['output_layernorm']['scale']
  assert mask['backbone']['embeddings']['word_embeddings']['embedding']
  assert mask['backbone']['logit_scale'] and mask['backbone']['text_projection']


def test_schedule_warmup_decay_and_batch_scaling():
  schedule = optim.learning_rate_schedule(optimizer_config(warmup_steps=10), 110, 256)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60),
                              schedule(110)], [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
  scaled = optim.learning_rate_schedule(
      optimizer_config(warmup_steps=10, scale_lr_by_batch=True), 110, 256)
  np.testing.assert_allclose(scaled(10), 1e-3 * 256 / 1024, rtol=1e-6)


def test_adamw_decoupled_decay_matches_reference_formula():
  """One AdamW step: p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p) (pytorch_transformers)."""
  params = {'kernel': jnp.array([1.0, -2.0]), 'bias': jnp.array([0.5])}
  grads = {'kernel': jnp.array([0.1, 0.2]), 'bias': jnp.array([0.3])}
  cfg = optimizer_config(warmup_steps=0, lr=0.1, weight_decay=0.5)
  optimizer = optim.create_optimizer(cfg, 100, 1)
  state = optimizer.init(params)
  updates, _ = optimizer.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  lr = float(optim.learning_rate_schedule(cfg, 100, 1)(0))
  adam = lambda g: g / (jnp.abs(g) + 1e-8)  # first step: m_hat = g, v_hat = g^2
  np.testing.assert_allclose(new['kernel'], params['kernel'] - lr * (
      adam(grads["kernel"]) + 0.5 * params["kernel"]), rtol=1e-5)
  np.testing.assert_allclose(new["bias"], params["bias"] - lr * adam(grads["bias"]), rtol=1e-5)
