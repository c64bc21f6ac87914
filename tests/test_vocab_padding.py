"""The padded vocabulary (`ModelConfig.vocab_multiple`, issue 15 item 5).

Padding rows never win (logits masked in both head modes, losses equal the unpadded model's),
exports keep the authors' row counts, an authors' checkpoint loaded into a padded model exports
back to identical arrays, and the padded vocabulary is sharded over `tensor` while an undivisible
one is replicated with a warning.
"""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import mvp_jax
from mvp_jax import convert
from mvp_jax import layers
from mvp_jax import losses
from mvp_jax import model as model_lib
from mvp_jax import sharding
from mvp_jax import vocab_padding
from mvp_jax import weights

# 300 -> 384 table rows, 200 -> 256 decoder rows.
PADDED = mvp_jax.config.tiny(region_feature_dim=12, vocab_multiple=128)
UNPADDED = PADDED.replace(vocab_multiple=1)
WORDS, ROWS = PADDED.word_vocab_size, PADDED.vocab_size
BATCH, TEXT, TAGS, REGIONS = 2, 8, 4, 4
VOCAB_PATHS = (('backbone', 'embeddings', 'word_embeddings', 'embedding'),
               ('mlm_head', 'decoder'), ('mlm_head', 'bias'),
               ('concept_head', 'decoder'), ('concept_head', 'bias'))


def _batch():
  rng = np.random.RandomState(0)
  batch = dict(model_lib.dummy_batch(PADDED, BATCH, TEXT, TAGS, REGIONS))
  # Labels on the highest real word ids too: the padding columns sit right after them.
  text_labels = np.full((BATCH, TEXT), -1)
  text_labels[:, 1:4] = [[WORDS - 1, 5, 17], [WORDS - 2, 3, WORDS - 1]]
  tag_labels = np.full((BATCH, TAGS), -1)
  tag_labels[:, :2] = [[WORDS - 1, 9], [4, WORDS - 3]]
  batch.update(input_ids_a=jnp.asarray(rng.randint(0, ROWS, (BATCH, TEXT)), jnp.int32),
               input_ids_b=jnp.asarray(rng.randint(0, ROWS, (BATCH, TAGS)), jnp.int32),
               img_feats=jnp.asarray(rng.randn(BATCH, REGIONS, 12), jnp.float32),
               mlm_labels_a=jnp.asarray(text_labels, jnp.int32),
               mlm_labels_b=jnp.asarray(tag_labels, jnp.int32))
  return batch


@pytest.fixture(scope='module')
def padded_params():
  return nn.unbox(jax.jit(lambda key: mvp_jax.init_params(PADDED, key))(jax.random.PRNGKey(0)))


def _with_winning_padding(params):
  """The padding columns' decoder bias at +1000: unmasked, they would win every position."""
  params = jax.tree_util.tree_map(np.array, params)
  for head in ('mlm_head', 'concept_head'):
    params[head]['bias'][WORDS:] = 1000.0
  return params


def _unpadded(params):
  """The same model without its padding rows (a valid UNPADDED parameter tree)."""
  flat = traverse_util.flatten_dict(jax.tree_util.tree_map(np.array, params))
  rows = convert.vocab_rows(UNPADDED)
  return traverse_util.unflatten_dict({p: v[:rows[p][0]] if p in rows else v
                                       for p, v in flat.items()})


def test_fit_rows_pads_with_zeros_and_cuts_only_zero_rows():
  table = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
  padded = vocab_padding.fit_rows(table, 5)
  assert padded.shape == (5, 4) and not padded[3:].any()
  np.testing.assert_array_equal(padded[:3], table)
  np.testing.assert_array_equal(vocab_padding.fit_rows(padded, 3), table)
  with pytest.raises(ValueError, match='row 2 is not zero'):
    vocab_padding.fit_rows(table, 2, 'decoder')


def test_config_pads_the_base_vocabulary():
  base = mvp_jax.config.base()
  assert (base.vocab_multiple, base.padded_vocab_size, base.padded_word_vocab_size) == (
      128, 86144, 30592)
  assert (UNPADDED.padded_vocab_size, UNPADDED.padded_word_vocab_size) == (300, 200)
  with pytest.raises(ValueError, match='vocab_multiple'):
    mvp_jax.ModelConfig(vocab_multiple=0)


def test_init_gives_padded_shapes_with_zero_padding_rows(padded_params):
  table = np.asarray(padded_params['backbone']['embeddings']['word_embeddings']['embedding'])
  assert table.shape == (384, PADDED.hidden_size)
  assert not table[ROWS:].any() and np.abs(table[:ROWS]).min(axis=1).max() > 0
  for head in ('mlm_head', 'concept_head'):
    decoder = np.asarray(padded_params[head]['decoder'])
    assert decoder.shape == (256, PADDED.hidden_size)
    np.testing.assert_array_equal(decoder[:WORDS], table[:WORDS])  # tie_weights' copy
    assert not decoder[WORDS:].any()


def test_an_unmasked_padding_logit_would_win_a_masked_one_never_does():
  head_params = layers.PredictionHead(PADDED, 256, WORDS).init(
      jax.random.PRNGKey(0), jnp.zeros((1, PADDED.hidden_size)))['params']
  head_params = jax.tree_util.tree_map(np.array, nn.unbox(head_params))
  head_params['bias'][WORDS:] = 1000.0
  x = jax.random.normal(jax.random.PRNGKey(1), (6, PADDED.hidden_size))
  unmasked = layers.PredictionHead(PADDED, 256).apply({'params': head_params}, x)
  assert (np.asarray(unmasked).argmax(-1) >= WORDS).all()  # without the mask padding wins
  masked = np.asarray(layers.PredictionHead(PADDED, 256, WORDS).apply({'params': head_params}, x))
  np.testing.assert_array_equal(masked[:, WORDS:], layers.MASKED_LOGIT)
  np.testing.assert_array_equal(masked[:, :WORDS], np.asarray(unmasked)[:, :WORDS])
  assert (masked.argmax(-1) < WORDS).all()


@pytest.mark.parametrize('positions', ['all', 'masked'])
def test_padding_rows_never_win_and_losses_equal_the_unpadded_model(padded_params, positions):
  """Both head modes: logits of the padding columns are MASKED_LOGIT, argmax and the MLM / MCR
  losses and accuracies equal those of the same model without padding rows."""
  params = _with_winning_padding(padded_params)
  batch = _batch()
  results = {}
  for config, tree in ((PADDED, params), (UNPADDED, _unpadded(params))):
    config = config.replace(prediction_positions=positions)
    outputs = model_lib.MVPPretrainingModel(config).apply({'params': tree}, batch)
    results[config.vocab_multiple] = outputs
    text = losses.masked_language_loss(*model_lib.text_predictions(outputs, batch))
    concept = losses.masked_concept_loss(*model_lib.concept_predictions(outputs, batch))
    results[config.vocab_multiple, 'losses'] = jax.device_get((text, concept))
  for name, value in results[128].items():
    if not name.endswith('_logits'):
      continue
    value, real = np.asarray(value), np.asarray(results[1][name])
    assert value.shape[-1] == 256 and real.shape[-1] == WORDS, name
    np.testing.assert_array_equal(value[..., WORDS:], layers.MASKED_LOGIT, err_msg=name)
    np.testing.assert_allclose(value[..., :WORDS], real, atol=1e-5, rtol=0, err_msg=name)
    assert (value.argmax(-1) < WORDS).all(), name
  assert {'mlm_logits' if positions == 'all' else 'mlm_gathered_logits'} <= set(results[128])
  (text, text_metrics), (concept, concept_metrics) = results[128, 'losses']
  (text_ref, text_ref_metrics), (concept_ref, concept_ref_metrics) = results[1, 'losses']
  np.testing.assert_allclose([text, concept], [text_ref, concept_ref], rtol=1e-6)
  assert text_metrics == text_ref_metrics and concept_metrics == concept_ref_metrics
  assert text_metrics['count'] == 6 and concept_metrics['count'] == 4


def test_padding_gradients_are_zero(padded_params):
  """Masked logits give the padding rows no gradient, so training keeps them at zero."""
  batch = _batch()

  def loss(params):
    outputs = model_lib.MVPPretrainingModel(PADDED).apply({'params': params}, batch)
    return (losses.masked_language_loss(outputs['mlm_logits'], batch['mlm_labels_a'])[0]
            + losses.masked_concept_loss(outputs['vis_mlm_logits'], batch['mlm_labels_b'])[0])

  grads = jax.jit(jax.grad(loss))(padded_params)
  for head in ('mlm_head', 'concept_head'):
    assert not np.asarray(grads[head]['decoder'])[WORDS:].any()
    assert not np.asarray(grads[head]['bias'])[WORDS:].any()
    assert np.abs(np.asarray(grads[head]['bias'])[:WORDS]).max() > 0
  table = np.asarray(grads['backbone']['embeddings']['word_embeddings']['embedding'])
  assert not table[ROWS:].any()


def test_export_keeps_the_authors_row_counts_and_round_trips(padded_params):
  state = convert.params_to_torch(padded_params, PADDED)
  reference = convert.params_to_torch(_unpadded(padded_params), UNPADDED)
  assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
  assert state['bert.embeddings.word_embeddings.weight'].shape == (ROWS, PADDED.hidden_size)
  assert state['cls.predictions.decoder.weight'].shape == (WORDS, PADDED.hidden_size)
  assert state['half_mlm.bias'].shape == (WORDS,)
  for name, value in reference.items():
    np.testing.assert_array_equal(state[name], value, err_msg=name)
  back = traverse_util.flatten_dict(convert.torch_to_params(state, PADDED))
  for path, value in traverse_util.flatten_dict(padded_params).items():
    np.testing.assert_array_equal(back[path], np.asarray(value), err_msg='/'.join(path))


def test_export_refuses_to_cut_a_nonzero_padding_row(padded_params):
  params = jax.tree_util.tree_map(np.array, padded_params)
  params['mlm_head']['decoder'][WORDS + 3, 0] = 0.5
  with pytest.raises(convert.ConversionError, match=f'row {WORDS + 3} is not zero'):
    convert.params_to_torch(params, PADDED)


def test_authors_checkpoint_into_a_padded_model_exports_identical_arrays(tmp_path):
  """An unpadded (authors' row count) state dict -> padded model -> export: the same arrays."""
  unpadded = nn.unbox(mvp_jax.init_params(UNPADDED, jax.random.PRNGKey(3)))
  leaves, tree = jax.tree_util.tree_flatten(unpadded)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  unpadded = jax.tree_util.tree_unflatten(tree, [
      np.asarray(leaf + 0.1 * jax.random.normal(k, leaf.shape), np.float32)
      for leaf, k in zip(leaves, keys)])  # no zero rows anywhere
  state = convert.params_to_torch(unpadded, UNPADDED)
  config, params = mvp_jax.load_checkpoint(state, num_heads=PADDED.num_heads, vocab_multiple=128)
  assert config.padded_vocab_size == 384 and config.padded_word_vocab_size == 256
  for path in VOCAB_PATHS:
    value = np.asarray(traverse_util.flatten_dict(params)[path])
    assert value.shape[0] == (384 if path[0] == 'backbone' else 256), path
    assert not value[(ROWS if path[0] == 'backbone' else WORDS):].any(), path
  exported = weights.export(params, config, str(tmp_path / 'exported'))
  written = convert.load_state_dict(exported)
  assert set(written) == set(state)
  for name, value in state.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  # Our exported folder and an unpadded run's tree both load into the padded model again.
  again_config, again = mvp_jax.load_checkpoint(exported)
  assert again_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, jax.device_get(params))
  tree_source = weights.Source('<run>', 'run', 'pretrain', tree=traverse_util.flatten_dict(
      unpadded), config=UNPADDED)
  from_tree, _ = weights.load(tree_source, params, model_config=config)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(from_tree),
                         jax.device_get(params))


def test_padded_vocabulary_is_sharded_over_tensor_and_undivisible_rows_replicate(caplog):
  """On the 8 fake CPU devices (tests/conftest.py): the padded table and decoders split their
  rows over `tensor`; the unpadded 201-row decoders of another config are replicated, with a
  warning, instead of failing."""
  assert jax.device_count() == 8
  mesh = sharding.create_mesh((4, 1, 2))
  rules = sharding.logical_rules('tensor')
  odd = UNPADDED.replace(vocab_size=301, word_vocab_size=201)
  specs = {}
  for config in (PADDED, odd):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      boxed = jax.eval_shape(lambda c=config: mvp_jax.init_params(c, jax.random.PRNGKey(0)))
      with caplog.at_level(logging.WARNING):
        shardings = sharding.param_shardings(boxed, mesh, rules)
      params = jax.jit(lambda c=config: nn.unbox(mvp_jax.init_params(c, jax.random.PRNGKey(0))),
                       out_shardings=shardings)()
    flat = traverse_util.flatten_dict(params)
    specs[config.vocab_multiple] = {p: tuple(flat[p].sharding.spec) for p in VOCAB_PATHS}
    if config is PADDED:
      table = flat[VOCAB_PATHS[0]]
      assert table.addressable_shards[0].data.shape == (192, PADDED.hidden_size)
  assert specs[128] == {p: ('tensor', None) if len(p) != 2 or p[1] == 'decoder' else ('tensor',)
                        for p in VOCAB_PATHS}
  assert all(not any(spec) for spec in specs[1].values()), specs[1]
  warned = [r.getMessage() for r in caplog.records if 'not divisible' in r.getMessage()]
  assert any("['mlm_head']['decoder']" in m and '(201)' in m for m in warned), warned


def test_import_authors_records_a_padded_config_and_keeps_the_row_counts(tmp_path):
  from mvp_jax import import_authors  # pylint: disable=g-import-not-at-top
  state = convert.params_to_torch(nn.unbox(mvp_jax.init_params(UNPADDED, jax.random.PRNGKey(5))),
                                  UNPADDED)
  convert.save_safetensors(state, str(tmp_path / 'authors.safetensors'))
  out = str(tmp_path / 'imported')
  import_authors.import_checkpoint(str(tmp_path / 'authors.safetensors'), out,
                                   num_heads=UNPADDED.num_heads, vocab_multiple=128)
  written = convert.load_state_dict(out)
  assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in state.items()}
  for name, value in state.items():
    np.testing.assert_array_equal(written[name], value, err_msg=name)
  config, params = mvp_jax.load_checkpoint(out)
  assert config.vocab_multiple == 128
  assert params['mlm_head']['decoder'].shape == (256, PADDED.hidden_size)
