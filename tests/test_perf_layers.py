"""Issue 15 items 3, 4, 6: attention through `jax.nn.dot_product_attention` with the additive
-10000 mask, remat policies that keep the gradients and dropout masks and really lower the
backward pass's memory, meshes from `mesh_utils`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import layers
from mvp_jax import model as model_lib
from mvp_jax import sharding

CONFIG = config_lib.tiny(num_text_layers=1, num_visual_layers=1, num_cross_layers=1,
                         region_feature_dim=16)


def _attention_inputs():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.normal(size=(3, 6, CONFIG.hidden_size)), jnp.float32)
  key_mask = jnp.asarray(np.arange(6)[None] < np.array([6, 4, 1])[:, None], jnp.int32)
  return x, key_mask


def _reference_attention(params, x, key_mask, config):
  """The authors' formula written out: softmax(QKᵀ/√d + (1 − mask)·−10000) V."""
  project = lambda name: jnp.einsum('blh,hnd->blnd', x, params[name]['kernel']) + params[name][
      'bias']
  q, k, v = project('query'), project('key'), project('value')
  scores = jnp.einsum('bqnd,bknd->bnqk', q, k) / np.sqrt(config.head_dim)
  scores = scores + (1.0 - key_mask[:, None, None, :]) * -10000.0
  context = jnp.einsum('bnqk,bknd->bqnd', jax.nn.softmax(scores, axis=-1), v)
  return jnp.einsum('blnd,ndh->blh', context, params['output']['kernel']) + params['output'][
      'bias']


def test_attention_matches_the_reference_formula():
  x, key_mask = _attention_inputs()
  module = layers.SelfAttention(CONFIG)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x, key_mask, True)['params'])
  ours = module.apply({'params': params}, x, key_mask, True)
  reference = _reference_attention(params, x, key_mask, CONFIG)
  np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=0)
  assert layers.attention_implementation(CONFIG, 6, 6) == 'xla'
  # With attention dropout active the explicit path runs (with dropout); at rate 0 in training
  # mode the fused path runs and equals the formula.
  dropped = module.apply({'params': params}, x, key_mask, False,
                         rngs={'dropout': jax.random.PRNGKey(1)})
  assert np.abs(np.asarray(dropped - reference)).max() > 1e-3
  no_dropout = layers.SelfAttention(CONFIG.replace(attention_dropout_rate=0.0)).apply(
      {'params': params}, x, key_mask, False)
  np.testing.assert_allclose(no_dropout, reference, atol=1e-6, rtol=0)


def test_bfloat16_attention_stays_close():
  x, key_mask = _attention_inputs()
  config = CONFIG.replace(dtype='bfloat16')
  module = layers.SelfAttention(config)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x, key_mask, True)['params'])
  ours = module.apply({'params': params}, x.astype(jnp.bfloat16), key_mask, True)
  assert ours.dtype == jnp.bfloat16
  reference = _reference_attention(params, x, key_mask, CONFIG)
  np.testing.assert_allclose(np.asarray(ours, np.float32), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize('policy', ['full', 'dots', 'dots_no_batch'])
@pytest.mark.parametrize('deterministic', [True, False])
def test_remat_policies_keep_the_gradients(policy, deterministic):
  # With dropout on, the rematerialised layers must draw the same masks as the plain ones.
  batch = model_lib.dummy_batch(CONFIG, 2, 6, 3, 3)
  params = nn.unbox(model_lib.init_params(CONFIG, jax.random.PRNGKey(0), batch))

  def grads(config):
    model = model_lib.MVPPretrainingModel(config)

    def loss(p):
      outputs = model.apply({'params': p}, batch, deterministic,
                            rngs={'dropout': jax.random.PRNGKey(3)})
      return sum(v.sum() for k, v in outputs.items()
                 if k in ('mlm_logits', 'vis_mlm_logits', 'pooled_output'))

    return jax.jit(jax.value_and_grad(loss))(params)

  plain_loss, plain = grads(CONFIG)
  remat_loss, remat = grads(CONFIG.replace(remat=True, remat_policy=policy))
  np.testing.assert_allclose(remat_loss, plain_loss, atol=1e-5, rtol=1e-6)
  if not deterministic:
    deterministic_loss, _ = jax.jit(jax.value_and_grad(
        lambda p: sum(v.sum() for k, v in model_lib.MVPPretrainingModel(CONFIG).apply(
            {'params': p}, batch).items()
                      if k in ('mlm_logits', 'vis_mlm_logits', 'pooled_output'))))(params)
    assert abs(float(deterministic_loss) - float(plain_loss)) > 1e-3  # dropout was active
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def _encoder_backward_temp_bytes(config, num_layers=8, batch=16, length=64):
  """XLA's temporary bytes of one encoder's compiled forward + backward, with dropout."""
  encoder = layers.Encoder(config, num_layers)
  x = jnp.ones((batch, length, config.hidden_size), jnp.float32)
  key_mask = jnp.ones((batch, length), jnp.int32)
  rngs = {'dropout': jax.random.PRNGKey(1)}
  params = encoder.init({'params': jax.random.PRNGKey(0), **rngs}, x, key_mask, False)

  def loss(p, inputs):
    return jnp.sum(encoder.apply(p, inputs, key_mask, False, rngs=rngs)[0] ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_remat_lowers_the_backward_memory_on_the_default_scheduler():
  # XLA:CPU expands optimisation barriers before it schedules and then CSEs the recomputation
  # into the forward pass, so a plain `jax.checkpoint` kept every layer's activations (the
  # temporaries equalled remat off); `layers.ordered_remat` ties each recomputation to the
  # cotangent of its layer's output, so only about one layer's activations are alive at a time.
  config = CONFIG.replace(hidden_size=64, num_heads=4, mlp_dim=256)
  off = _encoder_backward_temp_bytes(config)
  full = _encoder_backward_temp_bytes(config.replace(remat=True, remat_policy='full'))
  dots = _encoder_backward_temp_bytes(config.replace(remat=True, remat_policy='dots'))
  assert full < 0.4 * off, (full, off)
  assert dots < 0.8 * off, (dots, off)
  with pytest.raises(ValueError, match='remat_policy must be one of'):
    CONFIG.replace(remat_policy='offload')


def test_mesh_from_mesh_utils():
  mesh = sharding.create_mesh((-1, 2, 1))
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  assert sorted(d.id for d in mesh.devices.ravel()) == list(range(8))
  hybrid = sharding.create_mesh((4, -1, 1), dcn_shape=(-1, 1, 1))  # one process = one granule
  assert dict(hybrid.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  with pytest.raises(ValueError, match=r'DCN mesh \[2, 1, 1\] needs 2 slices'):
    sharding.create_mesh((4, 1, 1), dcn_shape=(2, 1, 1))
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.create_mesh((16, 1, 1))
  assert dict(sharding.create_mesh((2, 1, 1)).shape)['data'] == 2
