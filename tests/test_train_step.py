"""The update step and optimiser: local vs global negatives, accumulation, decay mask, schedule,
the Adam state of the groups a stage freezes, MFU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mvp_jax import config as config_lib
from mvp_jax import metrics as metrics_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax.tasks import pretrain

CONFIG = config_lib.tiny(region_feature_dim=12, dropout_rate=0.0, attention_dropout_rate=0.0,
                         vocab_size=60, word_vocab_size=40, num_text_layers=1,
                         num_visual_layers=1, num_cross_layers=1, hidden_size=16, mlp_dim=32)
BATCH, TEXT, TAGS, REGIONS = 8, 6, 3, 4


def make_batch(seed=0, batch=BATCH, config=CONFIG):
  """A random pre-training batch of `batch` rows for `config` (lengths TEXT, TAGS, REGIONS)."""
  rng = np.random.default_rng(seed)
  ids = lambda shape: rng.integers(5, config.word_vocab_size, shape).astype(np.int32)
  return dict(
      input_ids_a=ids((batch, TEXT)), attention_mask_a=np.ones((batch, TEXT), np.int32),
      token_type_ids_a=np.zeros((batch, TEXT), np.int32), input_ids_b=ids((batch, TAGS)),
      token_type_ids_b=np.ones((batch, TAGS), np.int32),
      attention_mask_b=np.ones((batch, TAGS + REGIONS), np.int32),
      img_feats=rng.standard_normal((batch, REGIONS, 12)).astype(np.float32),
      phrase_index=np.tile([[3, 5]], (batch, 1)).astype(np.int32),
      img_index=np.tile([[TEXT, TEXT + REGIONS]], (batch, 1)).astype(np.int32),
      mlm_labels_a=np.where(rng.random((batch, TEXT)) < 0.3, ids((batch, TEXT)), -1),
      mlm_labels_b=np.where(rng.random((batch, TAGS)) < 0.3, ids((batch, TAGS)), -1))


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
    return jax.jit(lambda p, b: pretrain.compute_losses(
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
  """accum=2 == one step with 2 local groups: the same losses and gradients.

  MCR, ITC and MLM are normalised per group (mvp_jax/losses.py), so the claim holds for all
  three. Compared are the gradients, at a tolerance far above float32 summation-order noise on
  any CPU, not post-Adam parameters (Adam's first step divides each gradient by its own
  magnitude and amplifies that noise).
  """
  model = model_lib.MVPPretrainingModel(CONFIG)
  params = nn.unbox(model_lib.init_params(CONFIG, jax.random.PRNGKey(0)))
  batch = make_batch(1)
  weights = dict(mcr=1.0, mlm=1.0, itm=0.0, wpg=0.0, itc=1.0)
  results = []
  for accum, groups in ((2, 1), (1, 2)):
    loss_fn = lambda p, b, r, g=groups: pretrain.compute_losses(
        model, p, b, r, stage=2, num_groups=g, weights=weights)
    grads, metrics = jax.jit(lambda p, b, a=accum, f=loss_fn: train_step_lib.accumulated_gradients(
        f, p, b, jax.random.PRNGKey(5), a))(params, batch)
    results.append((grads, metrics))
  (ga, ma), (gb, mb) = results
  for name in ('loss_itc', 'loss_mcr', 'loss_mlm'):
    np.testing.assert_allclose(ma[name], mb[name], rtol=1e-5, err_msg=name)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(gb))
  for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(x, y, atol=1e-5 * scale, rtol=1e-4)
  assert scale > 1e-3  # real gradients, not zeros
  assert int(ma['itc_count']) == int(mb['itc_count']) == 2 * BATCH


def test_stage_switch_gives_the_newly_trained_group_a_first_adam_step():
  """Issue 9/10 item 3: after k steps with a group held, its first update is a first Adam step
  (|update| = lr · |g| / (|g| + eps) ≈ lr), not one bias-corrected with the advanced counter."""
  cfg = optimizer_config(lr=0.1, weight_decay=0.0, warmup_steps=0)
  params = {'uni': jnp.array([1.0, -2.0]), 'cross': {'w': jnp.array([0.5, 3.0, -1.0])}}
  grads = {'uni': jnp.array([0.3, -0.1]), 'cross': {'w': jnp.array([0.2, -0.4, 0.05])}}
  schedule = optim.learning_rate_schedule(cfg, 100, 1)
  stage1 = optim.create_optimizer(cfg, 100, 1, group_prefixes=('cross',), held_groups=('cross',))
  stage2 = optim.create_optimizer(cfg, 100, 1, group_prefixes=('cross',))
  state = stage1.init(params)
  for _ in range(10):  # stage 1: 'cross' is held (and its updates zero)
    updates, state = stage1.update(grads, state, params)
    np.testing.assert_array_equal(updates['cross']['w'], 0.0)
  updates, state = stage2.update(grads, state, params)
  g = grads['cross']['w']
  expected = -float(schedule(10)) * g / (jnp.abs(g) + 1e-8)
  np.testing.assert_allclose(updates['cross']['w'], expected, rtol=1e-5)
  # The trained group continued its own counter: its 11th step is not a first step.
  fresh = optim.create_optimizer(cfg, 100, 1)
  fresh_state = fresh.init(params)
  for _ in range(11):
    fresh_updates, fresh_state = fresh.update(grads, fresh_state, params)
  np.testing.assert_allclose(updates['uni'], fresh_updates['uni'], rtol=1e-5)


def test_grouped_optimizer_without_held_groups_is_adamw():
  cfg = optimizer_config(lr=0.05, weight_decay=0.1, warmup_steps=2)
  params = {'a': {'kernel': jnp.array([1.0, -2.0])}, 'b': {'bias': jnp.array([0.5])}}
  grads = {'a': {'kernel': jnp.array([0.1, 0.2])}, 'b': {'bias': jnp.array([0.3])}}
  grouped = optim.create_optimizer(cfg, 20, 1, group_prefixes=('b',))
  reference = optax.adamw(optim.learning_rate_schedule(cfg, 20, 1), b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=0.1, mask=optim.decay_mask)
  s1, s2 = grouped.init(params), reference.init(params)
  for _ in range(4):
    u1, s1 = grouped.update(grads, s1, params)
    u2, s2 = reference.update(grads, s2, params)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u1, u2)


def test_mfu_divides_per_device_flops_by_the_per_device_peak():
  """Issue 10 item 2: XLA's cost analysis of a sharded step is per device."""
  out = metrics_lib.throughput(flops_per_device_step=2e12, steps=10, seconds=4.0,
                               num_devices=8, peak_per_device=10e12)
  np.testing.assert_allclose(out['tflops_per_s_per_device'], 5.0)
  np.testing.assert_allclose(out['tflops_per_s_global'], 40.0)
  np.testing.assert_allclose(out['mfu'], 0.5)  # not 0.5 / 8
  assert 'mfu' not in metrics_lib.throughput(2e12, 10, 4.0, 8, None)
  assert metrics_lib.throughput(None, 10, 4.0, 8, 1e12) == {}
  assert metrics_lib.peak_flops_per_device('TPU v4') == 275e12
  assert metrics_lib.peak_flops_per_device('cpu', 3e9) == 3e9


def test_decay_mask_excludes_biases_and_layernorm():
  params = model_lib.init_params(CONFIG, jax.random.PRNGKey(0))
  mask = optim.decay_mask(nn.unbox(params))
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
