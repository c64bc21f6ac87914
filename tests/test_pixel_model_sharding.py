"""The pixel model (a ViT tower in the graph) trained one step on 8 fake devices: data x fsdp and
data x tensor give the loss and the update of one device, and the tower's parameters are split."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import pixel_model
from mvp_jax import sharding
from mvp_jax import train_step
from mvp_jax import trainer_lib
from mvp_jax.tasks import pretrain
from jax.sharding import NamedSharding, PartitionSpec

B, TEXT, TAGS, R, SIZE = 8, 8, 3, 4, 16
CONFIG = config_lib.tiny(region_feature_dim=38, num_text_layers=1, num_visual_layers=1,
                         num_cross_layers=1, vocab_size=128, word_vocab_size=96,
                         vision=dict(image_size=SIZE, width=32, depth=1, num_heads=2, mlp_dim=64,
                                     patch_size=8, lr_multiplier=0.5, remat=True))
OPTIMIZER = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, weight_decay=0.01, b1=0.9,
                                           b2=0.999, eps=1e-3, grad_clip_norm=1.0))
# eps 1e-3: the first Adam step is g / (|g| + eps), smooth in g (a tiny eps makes it sign(g)),
# so summation-order differences between layouts stay small in the update.


def _batch():
  rng = np.random.RandomState(0)
  lo = rng.uniform(0, 0.5, (B, R, 2))
  regions = rng.randint(2, R + 1, B)
  batch = dict(
      input_ids_a=rng.randint(1, 128, (B, TEXT)), attention_mask_a=np.ones((B, TEXT)),
      token_type_ids_a=np.zeros((B, TEXT)), input_ids_b=rng.randint(1, 128, (B, TAGS)),
      token_type_ids_b=np.ones((B, TAGS)),
      attention_mask_b=np.concatenate([np.ones((B, TAGS)), np.arange(R)[None] < regions[:, None]],
                                      1),
      mlm_labels_a=np.where(rng.uniform(size=(B, TEXT)) < 0.3, rng.randint(0, 96, (B, TEXT)), -1),
      mlm_labels_b=np.where(rng.uniform(size=(B, TAGS)) < 0.5, rng.randint(0, 96, (B, TAGS)), -1),
      phrase_index=np.tile([1, 3], (B, 1)), img_index=np.stack([np.full(B, TEXT), TEXT + regions],
                                                               1))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  batch['pixels'] = jnp.asarray(rng.uniform(-1, 1, (B, SIZE, SIZE, 3)), jnp.float32)
  batch['region_boxes'] = jnp.asarray(np.concatenate([lo, lo + 0.4], -1), jnp.float32)
  return batch


def _step(mesh_shape, rules):
  """(train state after one step, metrics) of the pre-training step on a (data, fsdp, tensor)
  mesh; deterministic dropout so that every layout computes the same function."""
  mesh = sharding.create_mesh(mesh_shape)
  setup = trainer_lib.MeshSetup(mesh, sharding.logical_rules(rules),
                                sharding.batch_sharding(mesh), NamedSharding(mesh, PartitionSpec()))
  model = model_lib.MVPPretrainingModel(CONFIG)
  tx = optim.create_optimizer(OPTIMIZER, 10, B, subtrees=pixel_model.optimizer_subtrees(CONFIG))
  batch = _batch()
  init_batch = {k: v[:2] for k, v in batch.items()}
  state, state_sharding = trainer_lib.sharded_init(
      lambda rng: model_lib.init_params(CONFIG, rng, init_batch), tx, jax.random.PRNGKey(0), setup)

  def loss_fn(params, batch, rng):
    return pretrain.compute_losses(model, params, batch, rng, stage=2, num_groups=1, weights={},
                                   deterministic=True)

  step = train_step.make_update_step(loss_fn, tx, lambda s: s)

  def ruled(state, batch):
    with nn.logical_axis_rules(setup.rules):
      return step(state, batch)

  with jax.set_mesh(mesh):
    new_state, metrics = jax.jit(ruled, in_shardings=(state_sharding, setup.batch_sharding),
                                 out_shardings=(state_sharding, setup.replicated))(
                                     state, jax.device_put(batch, setup.batch_sharding))
  return state, new_state, metrics


@pytest.fixture(scope='module')
def reference():
  return jax.device_get(_step((1, 1, 1), 'data_parallel'))


@pytest.mark.parametrize('mesh_shape, rules, expected', [
    ((4, 2, 1), 'fsdp', {('encoder', 'block_0', 'mlp', 'fc1', 'kernel'): ('fsdp', None),
                         ('pos_embedding',): (None, 'fsdp')}),
    ((4, 1, 2), 'tensor', {('encoder', 'block_0', 'mlp', 'fc1', 'kernel'): (None, 'tensor'),
                           ('encoder', 'block_0', 'attention', 'query', 'kernel'):
                               (None, 'tensor', None)}),
])
def test_sharded_pixel_step_equals_single_device(reference, mesh_shape, rules, expected):
  ref_before, ref_after, ref_metrics = reference
  before, after, metrics = _step(mesh_shape, rules)
  tower = after.params['backbone']['vision_tower']
  for path, spec in expected.items():
    leaf = tower
    for key in path:
      leaf = leaf[key]
    assert tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec)) == spec
    assert leaf.addressable_shards[0].data.size < leaf.size
  metrics = jax.device_get(metrics)
  for name in ('loss', 'loss_mlm', 'loss_itc', 'loss_itm', 'loss_mcr', 'loss_wpg', 'grad_norm'):
    np.testing.assert_allclose(metrics[name], ref_metrics[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  updates = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b),
                                   jax.device_get(after.params), jax.device_get(before.params))
  ref_updates = jax.tree_util.tree_map(lambda a, b: a - b, ref_after.params, ref_before.params)
  tower_moved = jax.tree_util.tree_leaves(ref_updates['backbone']['vision_tower'])
  assert any(np.abs(u).max() > 0 for u in tower_moved)
  jax.tree_util.tree_map(lambda u, r: np.testing.assert_allclose(u, r, atol=1e-6, rtol=0),
                         updates, ref_updates)
