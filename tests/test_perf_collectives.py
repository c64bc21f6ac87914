"""Issue 15 item 2: with `local` negatives a data-parallel step on 8 devices communicates only
the gradient all-reduce (and scalar loss sums); the group-local gathers equal the global ones."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from mvp_jax import config as config_lib
from mvp_jax import losses
from mvp_jax import model as model_lib
from mvp_jax import negatives
from mvp_jax import sharding

# Lengths chosen so that no activation shape coincides with a parameter shape.
BATCH, TEXT, TAGS, REGIONS, GROUPS = 16, 10, 6, 5, 8
CONFIG = config_lib.tiny(region_feature_dim=24, num_text_layers=1, num_visual_layers=1,
                         num_cross_layers=1, prediction_positions='masked')
COLLECTIVE = re.compile(r'^\s*(?:ROOT )?%\S+ = (.+?) (all-gather|all-to-all|collective-permute|'
                        r'all-reduce|reduce-scatter|collective-broadcast)(?:-start)?\(')
SHAPE = re.compile(r'[a-z]+[0-9]*\[([0-9,]*)\]')


def _batch():
  rng = np.random.RandomState(0)
  text_mask = np.arange(TEXT)[None] < rng.randint(5, TEXT + 1, BATCH)[:, None]
  regions = rng.randint(2, REGIONS + 1, BATCH)
  words = rng.randint(0, CONFIG.word_vocab_size, (BATCH, TEXT))
  batch = dict(
      input_ids_a=words * text_mask, token_type_ids_a=np.zeros((BATCH, TEXT)),
      attention_mask_a=text_mask, input_ids_b=rng.randint(0, CONFIG.vocab_size, (BATCH, TAGS)),
      token_type_ids_b=np.ones((BATCH, TAGS)),
      attention_mask_b=np.concatenate([np.ones((BATCH, TAGS)),
                                       np.arange(REGIONS)[None] < regions[:, None]], 1),
      img_feats=rng.normal(size=(BATCH, REGIONS, CONFIG.region_feature_dim)),
      mlm_labels_a=np.where(text_mask & (rng.uniform(size=(BATCH, TEXT)) < 0.3), words, -1),
      mlm_labels_b=np.where(rng.uniform(size=(BATCH, TAGS)) < 0.3, 5, -1))
  return {k: jnp.asarray(v, jnp.float32 if k == 'img_feats' else jnp.int32)
          for k, v in batch.items()}


@pytest.fixture(scope='module')
def params():
  return nn.unbox(model_lib.init_params(CONFIG, jax.random.PRNGKey(0),
                                        model_lib.dummy_batch(CONFIG, BATCH, TEXT, TAGS, REGIONS)))


def _loss(params, batch, config=CONFIG, deterministic=True):
  """MCR + ITC + MLM + ITM with local negatives, the losses consuming the group-local outputs."""
  outputs = model_lib.MVPPretrainingModel(config).apply(
      {'params': params}, batch, deterministic, hard_negatives=jax.random.PRNGKey(1),
      negative_groups=GROUPS, rngs={'dropout': jax.random.PRNGKey(2)})
  itc = jax.vmap(lambda block: losses.contrastive_loss(block, outputs['logit_scale'])[0])(
      outputs['sim_blocks']).mean()
  mlm = losses.masked_language_loss(*model_lib.text_predictions(outputs, batch))[0]
  mcr = losses.masked_concept_loss(*model_lib.concept_predictions(outputs, batch))[0]
  # matching_loss per pair ([positive; negative] rows): the mean over pairs is the ITM loss.
  itm = jax.vmap(lambda pair: losses.matching_loss(pair)[0])(outputs['itm_pair_logits']).mean()
  return itc + mlm + mcr + itm


def _collectives(fn, *args):
  mesh = sharding.create_mesh((GROUPS, 1, 1))
  data = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  shardings = tuple(data if i else replicated for i in range(len(args)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules('data_parallel')):
    text = jax.jit(fn, in_shardings=shardings).lower(*args).compile().as_text()
  found = []
  for line in text.splitlines():
    match = COLLECTIVE.match(line)
    if match:
      shapes = [tuple(int(d) for d in dims.split(',') if d) for dims in
                SHAPE.findall(match.group(1))]
      found.append((match.group(2), shapes))
  return found


def _is_parameter_gradient(shape, params):
  """A parameter's shape, or a slice of one (the position table's used rows: [TEXT, H])."""
  return any(len(shape) == x.ndim and all(a <= b for a, b in zip(shape, x.shape))
             for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('remat', [False, True])
def test_data_parallel_step_has_only_the_gradient_all_reduce(params, remat):
  # With remat (and dropout on), `layers.ordered_remat`'s ties stay within each data shard.
  config = CONFIG.replace(remat=True, remat_policy='full') if remat else CONFIG
  loss = functools.partial(_loss, config=config, deterministic=not remat)
  found = _collectives(jax.grad(loss), params, _batch())
  parameter_shapes = {tuple(x.shape) for x in jax.tree_util.tree_leaves(params)}
  kinds = {kind for kind, _ in found}
  assert kinds == {'all-reduce'}, found
  gradient_reduces = 0
  for _, shapes in found:
    for shape in shapes:  # a scalar (loss sums, counts) or a parameter gradient, nothing else
      assert shape == () or _is_parameter_gradient(shape, params), (shape, found)
    gradient_reduces += any(shape in parameter_shapes and shape for shape in shapes)
  assert gradient_reduces >= 1


def test_global_indexing_would_gather_activations(params):
  """The check can fail: the same loss with global negatives needs cross-device gathers."""
  def global_loss(params, batch):
    outputs = model_lib.MVPPretrainingModel(CONFIG).apply(
        {'params': params}, batch, hard_negatives=jax.random.PRNGKey(1))
    return losses.matching_loss(outputs['itm_logits'])[0]
  found = _collectives(jax.grad(global_loss), params, _batch())
  assert any(kind != 'all-reduce' or any(s and not _is_parameter_gradient(s, params)
                                         for s in shapes) for kind, shapes in found), found


def test_wpg_style_other_sample_take_is_local():
  """`take_within_groups` with `random_other_index` (the WPG negative) needs no collective."""
  def wpg_like(x):
    other = negatives.random_other_index(jax.random.PRNGKey(2), BATCH, GROUPS)
    return jnp.einsum('blh,bmh->', x, sharding.take_within_groups(x, other, GROUPS))
  x = jnp.asarray(np.random.RandomState(0).normal(size=(BATCH, TEXT + REGIONS, 32)), jnp.float32)
  assert _collectives(jax.grad(wpg_like), x) in ([], [('all-reduce', [()])])
  other = negatives.random_other_index(jax.random.PRNGKey(2), BATCH, GROUPS)
  np.testing.assert_array_equal(sharding.take_within_groups(x, other, GROUPS), x[other])


def test_local_path_equals_global_indexing(params):
  batch = _batch()
  model = model_lib.MVPPretrainingModel(CONFIG)
  txt, img = negatives.mine_hard_negatives(jax.random.PRNGKey(3), jnp.zeros((BATCH, BATCH)) +
                                           jnp.arange(BATCH), GROUPS)
  run = lambda groups: model.apply({'params': params}, batch, hard_negatives=(txt, img),
                                   negative_groups=groups)
  local, global_ = run(GROUPS), run(1)
  assert not np.array_equal(txt, np.arange(BATCH))
  np.testing.assert_allclose(
      jax.vmap(lambda pair: losses.matching_loss(pair)[0])(local['itm_pair_logits']).mean(),
      losses.matching_loss(global_['itm_logits'])[0], atol=1e-6)
  for name in ('hard_sequence_output', 'hard_pooled_output', 'itm_logits'):
    np.testing.assert_allclose(local[name], global_[name], atol=1e-6, rtol=0, err_msg=name)
  np.testing.assert_allclose(local['sim_blocks'],
                             negatives.group_blocks(global_['sim_mat'], GROUPS), atol=1e-6)
  mined = model.apply({'params': params}, batch, hard_negatives=jax.random.PRNGKey(4),
                      negative_groups=GROUPS)
  block = BATCH // GROUPS
  txt, img = np.asarray(mined['hard_txt_index']), np.asarray(mined['hard_img_index'])
  np.testing.assert_array_equal(txt // block, np.arange(BATCH) // block)
  np.testing.assert_array_equal(img // block, np.arange(BATCH) // block)
  assert np.all(txt != img)


def test_the_pretraining_task_loss_has_only_the_gradient_all_reduce(params):
  """The real objective of the trainer (all five losses incl. WPG, dropout on), not a copy."""
  from mvp_jax.tasks import pretrain  # pylint: disable=g-import-not-at-top
  batch = dict(_batch(), phrase_index=jnp.tile(jnp.asarray([[1, 3]], jnp.int32), (BATCH, 1)),
               img_index=jnp.tile(jnp.asarray([[TEXT, TEXT + 2]], jnp.int32), (BATCH, 1)))
  model = model_lib.MVPPretrainingModel(CONFIG)

  def task_loss(params, batch):
    return pretrain.compute_losses(model, params, batch, jax.random.PRNGKey(2), stage=2,
                                   num_groups=GROUPS, weights={})[0]

  found = _collectives(jax.grad(task_loss), params, batch)
  assert {kind for kind, _ in found} == {'all-reduce'}, found
  for _, shapes in found:
    for shape in shapes:
      assert shape == () or _is_parameter_gradient(shape, params), (shape, found)


def test_masked_heads_in_the_task_loss_equal_full_heads(params):
  """`prediction_positions='masked'` gives the trainer's losses of the full-position heads."""
  from mvp_jax.tasks import pretrain  # pylint: disable=g-import-not-at-top
  batch = dict(_batch(), phrase_index=jnp.tile(jnp.asarray([[1, 3]], jnp.int32), (BATCH, 1)),
               img_index=jnp.tile(jnp.asarray([[TEXT, TEXT + 2]], jnp.int32), (BATCH, 1)))
  results = {}
  for mode in ('all', 'masked'):
    model = model_lib.MVPPretrainingModel(CONFIG.replace(prediction_positions=mode))
    _, metrics = jax.jit(lambda p, b, m=model: pretrain.compute_losses(
        m, p, b, jax.random.PRNGKey(3), stage=2, num_groups=GROUPS, weights={},
        deterministic=True))(params, batch)
    results[mode] = metrics
  for name in ('loss_mcr', 'loss_itc', 'loss_mlm', 'loss_itm', 'loss_wpg', 'mlm_correct',
               'mcr_correct', 'itm_correct'):
    np.testing.assert_allclose(results['masked'][name], results['all'][name], atol=1e-5,
                               err_msg=name)
  assert int(results['masked']['mlm_dropped']) == 0
