"""The model initialised and run sharded on 8 fake CPU devices equals the single-device run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import losses
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import sharding
from mvp_jax import trainer_lib
from mvp_jax.tasks import pretrain

BATCH, TEXT, TAGS, REGIONS = 8, 8, 4, 4
INIT_KEY, NEGATIVE_KEY, WPG_KEY = (jax.random.PRNGKey(i) for i in range(3))
# The vocabulary is padded (125 -> 128 table rows, 93 -> 96 decoder rows) so that it divides the
# tensor axis.
CONFIG = config_lib.tiny(region_feature_dim=16, vocab_size=125, word_vocab_size=93,
                         vocab_multiple=8, num_text_layers=1, num_visual_layers=1,
                         num_cross_layers=1)


def _batch():
  rng = np.random.RandomState(0)
  text_lengths = rng.randint(4, TEXT + 1, BATCH)
  regions = rng.randint(2, REGIONS + 1, BATCH)
  text_mask = np.arange(TEXT)[None] < text_lengths[:, None]
  region_mask = np.arange(REGIONS)[None] < regions[:, None]
  mlm_labels = np.where(rng.uniform(size=(BATCH, TEXT)) < 0.3,
                        rng.randint(0, CONFIG.word_vocab_size, (BATCH, TEXT)), -1)
  tag_labels = np.where(rng.uniform(size=(BATCH, TAGS)) < 0.5,
                        rng.randint(0, CONFIG.word_vocab_size, (BATCH, TAGS)), -1)
  batch = dict(
      input_ids_a=rng.randint(0, CONFIG.vocab_size, (BATCH, TEXT)) * text_mask,
      token_type_ids_a=np.zeros((BATCH, TEXT)),
      attention_mask_a=text_mask,
      input_ids_b=rng.randint(0, CONFIG.vocab_size, (BATCH, TAGS)),
      token_type_ids_b=np.ones((BATCH, TAGS)),
      attention_mask_b=np.concatenate([np.ones((BATCH, TAGS)), region_mask], 1),
      img_feats=rng.normal(size=(BATCH, REGIONS, CONFIG.region_feature_dim))
      * region_mask[..., None],
      mlm_labels_a=mlm_labels, mlm_labels_b=tag_labels,
      phrase_index=np.stack([np.ones(BATCH), np.minimum(3, text_lengths)], 1),
      img_index=np.stack([np.full(BATCH, TEXT), TEXT + regions], 1))
  return {k: jnp.asarray(v, jnp.float32 if k == 'img_feats' else jnp.int32)
          for k, v in batch.items()}


def _init(rng):
  return model_lib.init_params(CONFIG, rng, model_lib.dummy_batch(CONFIG, BATCH, TEXT, TAGS,
                                                                  REGIONS))


def _loss_fn(params, batch):
  outputs = model_lib.MVPPretrainingModel(CONFIG).apply(
      {'params': nn.unbox(params)}, batch, hard_negatives=NEGATIVE_KEY)
  terms = dict(
      itc=losses.contrastive_loss(outputs['sim_mat'], outputs['logit_scale'])[0],
      itm=losses.matching_loss(outputs['itm_logits'])[0],
      mlm=losses.masked_language_loss(outputs['mlm_logits'], batch['mlm_labels_a'])[0],
      mcr=losses.masked_concept_loss(outputs['vis_mlm_logits'], batch['mlm_labels_b'])[0],
      wpg=losses.phrase_grounding_loss(WPG_KEY, outputs['cross_sequence_output'],
                                       batch['phrase_index'], batch['img_index'])[0])
  return sum(terms.values()), (outputs, terms)


def _run(params, batch):
  # Forward and losses only: a sharded backward pass doubles the compile time of this file.
  total, (outputs, terms) = _loss_fn(params, batch)
  return total, outputs, terms


@pytest.fixture(scope='module')
def reference():
  """Unsharded init and forward/backward on one device, outside any mesh or rules."""
  params = jax.jit(_init)(INIT_KEY)
  return jax.device_get((params, jax.jit(_run)(params, _batch())))


def _path(tree, *keys):
  for key in keys:
    tree = tree[key]
  return tree


@pytest.mark.filterwarnings('ignore:.*with mesh.*:DeprecationWarning')
@pytest.mark.parametrize('mesh_shape, rules, expected_specs', [
    ((4, 2, 1), 'fsdp', {
        ('backbone', 'text_encoder', 'layer_0', 'intermediate', 'kernel'): ('fsdp', None),
        ('backbone', 'embeddings', 'word_embeddings', 'embedding'): (None, 'fsdp'),
        ('backbone', 'cross_encoder', 'layer_0', 'attention', 'query', 'kernel'):
            ('fsdp', None, None),
        ('itm_head', 'kernel'): (None, None)}),
    ((4, 1, 2), 'tensor', {
        ('backbone', 'text_encoder', 'layer_0', 'intermediate', 'kernel'): (None, 'tensor'),
        ('backbone', 'visual_encoder', 'layer_0', 'output', 'kernel'): ('tensor', None),
        ('backbone', 'cross_encoder', 'layer_0', 'attention', 'query', 'kernel'):
            (None, 'tensor', None),
        ('backbone', 'text_encoder', 'layer_0', 'attention', 'output', 'kernel'):
            ('tensor', None, None),
        ('backbone', 'embeddings', 'word_embeddings', 'embedding'): ('tensor', None),
        ('mlm_head', 'decoder'): ('tensor', None),  # the padded vocabulary rows over `tensor`
        ('concept_head', 'bias'): ('tensor',)}),
])
def test_sharded_run_equals_single_device(reference, mesh_shape, rules, expected_specs):
  ref_params, (ref_total, ref_outputs, ref_terms) = reference
  mesh = sharding.create_mesh(mesh_shape)
  rules = sharding.logical_rules(rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(_init, INIT_KEY)
    param_shardings = sharding.param_shardings(abstract, mesh, rules)  # the trainer's
    params = jax.jit(_init, out_shardings=param_shardings)(INIT_KEY)
    batch = jax.device_put(_batch(), sharding.batch_sharding(mesh))
    total, outputs, terms = jax.jit(_run)(params, batch)

  # Parameters really are split over the mesh, as the rules say.
  unboxed = nn.unbox(params)
  for path, spec in expected_specs.items():
    leaf = _path(unboxed, *path)
    assert tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec)) == spec, (
        path, leaf.sharding.spec)
    if any(spec):
      assert not leaf.sharding.is_fully_replicated
      assert leaf.addressable_shards[0].data.size < leaf.size
  assert batch['input_ids_a'].addressable_shards[0].data.shape[0] == BATCH // (
      mesh.shape['data'] * mesh.shape['fsdp'])

  # Same initial values as the unsharded init, same outputs, losses and gradients.
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b),
                         jax.device_get(unboxed), nn.unbox(ref_params))
  outputs = jax.device_get(outputs)
  assert set(outputs) == set(ref_outputs)
  np.testing.assert_array_equal(outputs['hard_txt_index'], ref_outputs['hard_txt_index'])
  np.testing.assert_array_equal(outputs['hard_img_index'], ref_outputs['hard_img_index'])
  for name, value in outputs.items():
    np.testing.assert_allclose(value, ref_outputs[name], atol=1e-5, rtol=0, err_msg=name)
  for name, value in jax.device_get(terms).items():
    assert float(value) > 0, name
    np.testing.assert_allclose(value, ref_terms[name], atol=1e-5, rtol=0, err_msg=name)
  np.testing.assert_allclose(total, ref_total, atol=1e-5, rtol=0)


def test_activation_constraints_apply_under_set_mesh(reference):
  ref_params, (_, ref_outputs, _) = reference
  mesh = sharding.create_mesh((4, 2, 1))
  rules = sharding.logical_rules('fsdp')
  batch = jax.device_put(_batch(), sharding.batch_sharding(mesh))
  encode = lambda p, b: model_lib.MVPPretrainingModel(CONFIG).apply(
      {'params': nn.unbox(p)}, b, method=lambda m, x: m.backbone.encode_text(x))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    text = jax.jit(encode)(ref_params, batch)
  # The constraint on the encoder output splits the batch over (data, fsdp).
  assert text.addressable_shards[0].data.shape[0] == BATCH // 8
  np.testing.assert_allclose(text, ref_outputs['txt_encoder_output'], atol=1e-5, rtol=0)


def test_sharded_init_state_is_unboxed_and_adam_moments_follow_their_parameters():
  """Issue 9 item 4: the train state holds plain arrays (no nn.Partitioned), its shardings sit
  beside it, and every Adam moment, also inside a stage's held group, is sharded as its
  parameter."""
  setup = trainer_lib.create_mesh(ml_collections.ConfigDict(dict(mesh_shape=(4, 2, 1),
                                                                 sharding_rules='fsdp')))
  optimizer = optim.create_optimizer(
      ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, weight_decay=0.01, b1=0.9,
                                     b2=0.999, eps=1e-8, grad_clip_norm=1.0)),
      10, BATCH, group_prefixes=pretrain.STAGE1_FROZEN, held_groups=pretrain.STAGE1_FROZEN)
  state, state_sharding = trainer_lib.sharded_init(_init, optimizer, INIT_KEY, setup)
  is_box = lambda x: isinstance(x, nn.Partitioned)
  assert not any(is_box(x) for x in jax.tree_util.tree_leaves(state, is_leaf=is_box))
  params_rng, _ = jax.random.split(INIT_KEY)  # sharded_init's split of (params, state) keys
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params),
                         nn.unbox(jax.device_get(jax.jit(_init)(params_rng))))
  jax.tree_util.tree_map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(
      f'{x.shape}: {x.sharding} is not the recorded {s}'), state, state_sharding)
  params = {tuple(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
  checked = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for name in (('backbone', 'text_encoder', 'layer_0', 'intermediate', 'kernel'),
                 ('backbone', 'cross_encoder', 'layer_0', 'attention', 'query', 'kernel')):
      if keys[-len(name):] == name and leaf.shape == params[name].shape:
        assert not params[name].sharding.is_fully_replicated
        assert leaf.sharding.is_equivalent_to(params[name].sharding, leaf.ndim), (path, name)
        checked.add(name[1])
  assert checked == {'text_encoder', 'cross_encoder'}  # a trained and a held group's moments
