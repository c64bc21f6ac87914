"""Issue 15 item 3: the dropout PRNG (`dropout_rng`) and the non-finite guard as a conditional.

Parity tests run without dropout; these check what a faster PRNG must keep: the same seed gives
the same step, a resumed run equals an uninterrupted one, and the threefry default is unchanged.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import layers
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax.tasks import pretrain

import test_train_step  # pylint: disable=g-bad-import-order

CONFIG = config_lib.tiny(region_feature_dim=12, vocab_size=60, word_vocab_size=40,
                         num_text_layers=1, num_visual_layers=1, num_cross_layers=1,
                         hidden_size=16, mlp_dim=32, dropout_rate=0.3, attention_dropout_rate=0.3)
BATCH, TEXT, TAGS, REGIONS = 4, 6, 3, 4


def make_batch(seed=0):
  return test_train_step.make_batch(seed, batch=BATCH, config=CONFIG)


def make_step(config):
  model = model_lib.MVPPretrainingModel(config)
  optimizer_cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0,
      scale_lr_by_batch=False, reference_batch_size=1024))
  optimizer = optim.create_optimizer(optimizer_cfg, 10, BATCH)
  loss = pretrain.loss_fn(model, ml_collections.ConfigDict(), stage=0, num_groups=1)
  step = train_step_lib.make_update_step(
      loss, optimizer, optim.learning_rate_schedule(optimizer_cfg, 10, BATCH))
  params = nn.unbox(model_lib.init_params(config, jax.random.PRNGKey(0), make_batch()))
  state = train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(1))
  return jax.jit(step), state


def leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_trees_equal(a, b):
  for x, y in zip(leaves(a), leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_threefry_dropout_is_flax_dropout():
  x = jnp.ones((4, 64))
  key = jax.random.PRNGKey(3)
  ours = layers.Dropout(0.5).apply({}, x, False, rngs={'dropout': key})
  flax_ = nn.Dropout(0.5).apply({}, x, False, rngs={'dropout': key})
  np.testing.assert_array_equal(ours, flax_)


@pytest.mark.parametrize('impl', ['rbg', 'unsafe_rbg'])
def test_rbg_dropout_masks(impl):
  x = jnp.ones((64, 256))
  drop = lambda seed: layers.Dropout(0.25, rng_impl=impl).apply(
      {}, x, False, rngs={'dropout': jax.random.PRNGKey(seed)})
  first = np.asarray(drop(0))
  np.testing.assert_array_equal(first, drop(0))
  assert not np.array_equal(first, drop(1))
  assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
  assert abs((first == 0).mean() - 0.25) < 0.01
  threefry = nn.Dropout(0.25).apply({}, x, False, rngs={'dropout': jax.random.PRNGKey(0)})
  assert not np.array_equal(first, threefry)  # really another generator
  np.testing.assert_array_equal(
      layers.Dropout(0.25, rng_impl=impl).apply({}, x, True), x)


def test_config_rejects_unknown_dropout_rng():
  with pytest.raises(ValueError, match='dropout_rng must be one of'):
    CONFIG.replace(dropout_rng='philox')


@pytest.mark.slow  # three runs; threefry resume is in test_train
def test_rbg_dropout_step_is_seeded_and_resume_exact():
  step, state = make_step(CONFIG.replace(dropout_rng='rbg'))
  batches = [make_batch(seed) for seed in range(4)]
  straight = state
  for batch in batches:
    straight, metrics = step(straight, batch)
  assert np.isfinite(float(metrics['loss']))
  again = state
  for batch in batches[:2]:
    again, _ = step(again, batch)
  # A resume: the state goes through host numpy (as a checkpoint does) and continues.
  resumed = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), again)
  for batch in batches[2:]:
    resumed, _ = step(resumed, batch)
  assert_trees_equal(straight.params, resumed.params)
  # Dropout is on: without it the step differs.
  plain_step, _ = make_step(CONFIG.replace(dropout_rng='rbg', dropout_rate=0.0,
                                           attention_dropout_rate=0.0))
  _, plain = plain_step(state, batches[0])
  _, first = step(state, batches[0])
  assert float(plain['loss']) != float(first['loss'])


def test_nonfinite_step_leaves_the_state_unchanged():
  step, state = make_step(CONFIG)
  batch = make_batch()
  bad = dict(batch, img_feats=np.full_like(batch['img_feats'], np.nan))
  after, metrics = step(state, bad)
  assert bool(metrics['nonfinite_loss']) and bool(metrics['nonfinite_grad_norm'])
  assert int(after.step) == 1
  assert_trees_equal(after.params, state.params)
  assert_trees_equal(after.opt_state, state.opt_state)
  good, metrics = step(after, batch)
  assert not bool(metrics['nonfinite_loss'])
  assert any(not np.array_equal(x, y) for x, y in zip(leaves(good.params), leaves(state.params)))


def test_the_guard_is_a_conditional_not_a_select_over_the_state():
  step, state = make_step(CONFIG.replace(dropout_rate=0.0, attention_dropout_rate=0.0))
  hlo = step.lower(state, make_batch()).as_text()
  assert 'stablehlo.case' in hlo or 'stablehlo.if' in hlo
  # The largest parameter (the word table) is never the operand of a select.
  rows = CONFIG.vocab_size
  selects = [line for line in hlo.splitlines() if 'stablehlo.select' in line
             and f'tensor<{rows}x{CONFIG.hidden_size}xf32>' in line]
  assert not selects, selects[:3]

