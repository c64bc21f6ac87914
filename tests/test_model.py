"""Model options: bfloat16 compute, remat, uni-modal path, return_layer, dropout, decoder init,
cross-modal tag slots (spec §1, §10)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mvp_jax import config as config_lib
from mvp_jax import losses
from mvp_jax import model as model_lib

BATCH, TEXT, TAGS, REGIONS = 4, 8, 4, 4
CONFIG = config_lib.tiny(region_feature_dim=16, num_text_layers=1, num_visual_layers=1,
                         num_cross_layers=2)
HARD = (jnp.array([0, 1, 3, 0], jnp.int32), jnp.array([2, 3, 2, 1], jnp.int32))


def _batch():
  rng = np.random.RandomState(0)
  text_mask = np.arange(TEXT)[None] < np.array([8, 6, 5, 7])[:, None]
  region_mask = np.arange(REGIONS)[None] < np.array([4, 3, 4, 2])[:, None]
  return dict(
      input_ids_a=jnp.asarray(rng.randint(0, CONFIG.vocab_size, (BATCH, TEXT)) * text_mask,
                              jnp.int32),
      token_type_ids_a=jnp.zeros((BATCH, TEXT), jnp.int32),
      attention_mask_a=jnp.asarray(text_mask, jnp.int32),
      input_ids_b=jnp.asarray(rng.randint(0, CONFIG.vocab_size, (BATCH, TAGS)), jnp.int32),
      token_type_ids_b=jnp.ones((BATCH, TAGS), jnp.int32),
      attention_mask_b=jnp.asarray(np.concatenate([np.ones((BATCH, TAGS)), region_mask], 1),
                                   jnp.int32),
      img_feats=jnp.asarray(rng.normal(size=(BATCH, REGIONS, 16)), jnp.float32),
      mlm_labels_a=jnp.asarray(np.where(text_mask & (np.arange(TEXT) % 3 == 1),
                                        rng.randint(0, CONFIG.word_vocab_size, (BATCH, TEXT)),
                                        -1), jnp.int32))


BATCH_DATA = _batch()


@pytest.fixture(scope='module')
def boxed_params():
  return jax.jit(model_lib.init_params, static_argnums=0)(CONFIG, jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def params(boxed_params):
  return nn.unbox(boxed_params)


def _forward(config, **kwargs):
  model = model_lib.MVPPretrainingModel(config)
  return jax.jit(lambda p, b: model.apply({'params': p}, b, **kwargs))


def _loss(config):
  model = model_lib.MVPPretrainingModel(config)

  def loss_fn(p, b):
    # Every encoder is in the gradient path; the ITM negatives pass would only add compile time.
    out = model.apply({'params': p}, b)
    total = (losses.contrastive_loss(out['sim_mat'], out['logit_scale'])[0]
             + losses.masked_language_loss(out['mlm_logits'], b['mlm_labels_a'])[0])
    return total, out

  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


@pytest.fixture(scope='module')
def float32_outputs(params):
  return _forward(CONFIG, hard_negatives=HARD, return_layer=CONFIG.num_cross_layers - 1)(
      params, BATCH_DATA)


def test_decoders_start_as_copies_of_the_word_rows(boxed_params):
  words = boxed_params['backbone']['embeddings']['word_embeddings']['embedding']
  for head in ('mlm_head', 'concept_head'):
    decoder = boxed_params[head]['decoder']
    assert isinstance(decoder, nn.Partitioned) and decoder.names == ('vocab', 'embed')
    assert decoder.value.shape == (CONFIG.word_vocab_size, CONFIG.hidden_size)
    np.testing.assert_array_equal(decoder.value, words.value[:CONFIG.word_vocab_size])
    np.testing.assert_array_equal(boxed_params[head]['bias'].value, 0.0)
  assert np.abs(np.asarray(words.value[:CONFIG.word_vocab_size])).max() > 0


def test_bfloat16_compute_keeps_float32_params(params, float32_outputs):
  config = CONFIG.replace(dtype='bfloat16')
  shapes = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0)))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(nn.unbox(shapes))} == {
      np.dtype('float32')}
  outputs = _forward(config, hard_negatives=HARD)(params, BATCH_DATA)
  assert outputs['cross_sequence_output'].dtype == jnp.bfloat16
  # Losses see float32 logits and unit-norm float32 embeddings.
  for name in ('itm_logits', 'mlm_logits', 'vis_mlm_logits', 'sim_mat'):
    assert outputs[name].dtype == jnp.float32, name
  tolerances = dict(sim_mat=0.03, pooled_output=0.03, itm_logits=0.03,
                    cross_sequence_output=0.15, mlm_logits=0.15, txt_encoder_output=0.1)
  for name, atol in tolerances.items():
    ours = np.asarray(outputs[name], np.float32)
    reference = np.asarray(float32_outputs[name])
    np.testing.assert_allclose(ours, reference, atol=atol, rtol=0, err_msg=name)
    assert not np.array_equal(ours, reference), f'{name}: bfloat16 not used'


def test_remat_gives_identical_outputs_and_gradients(params):
  (loss, outputs), grads = _loss(CONFIG)(params, BATCH_DATA)
  config = CONFIG.replace(remat=True)
  remat_shapes = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0)))
  assert (jax.tree_util.tree_structure(nn.unbox(remat_shapes))
          == jax.tree_util.tree_structure(params))  # same parameter names
  (remat_loss, remat_outputs), remat_grads = _loss(config)(params, BATCH_DATA)
  np.testing.assert_allclose(remat_loss, loss, atol=1e-6, rtol=0)
  for name in ('cross_sequence_output', 'pooled_output', 'mlm_logits', 'sim_mat'):
    np.testing.assert_allclose(remat_outputs[name], outputs[name], atol=1e-6, rtol=0)
  flat, remat_flat = (traverse_util.flatten_dict(g) for g in (grads, remat_grads))
  assert float(jnp.abs(flat[('backbone', 'text_encoder', 'layer_0', 'intermediate',
                             'kernel')]).max()) > 0
  for path, grad in flat.items():
    assert np.isfinite(grad).all(), path
    np.testing.assert_allclose(remat_flat[path], grad, atol=1e-6, rtol=1e-6, err_msg=str(path))


def test_uni_modal_path_has_no_cross_outputs(params, float32_outputs):
  outputs = _forward(CONFIG, run_cross=False)(params, BATCH_DATA)
  assert set(outputs) == {'txt_encoder_output', 'vis_encoder_output', 'text_embedding',
                          'visual_embedding', 'sim_mat', 'sim_blocks', 'logit_scale',
                          'vis_mlm_logits'}
  for name in outputs:
    np.testing.assert_allclose(outputs[name], float32_outputs[name], atol=1e-6, rtol=0)


def test_return_layer_last_is_the_final_output(params, float32_outputs):
  np.testing.assert_array_equal(float32_outputs['mid_output'],
                                float32_outputs['cross_sequence_output'])
  with pytest.raises(ValueError, match='return_layer'):
    _forward(CONFIG, return_layer=CONFIG.num_cross_layers)(params, BATCH_DATA)


def test_dropout_is_active_only_when_not_deterministic(params, float32_outputs):
  model = model_lib.MVPPretrainingModel(CONFIG)
  train = jax.jit(lambda p, b, key: model.apply({'params': p}, b, deterministic=False,
                                                rngs={'dropout': key}))
  first = train(params, BATCH_DATA, jax.random.PRNGKey(1))
  again = train(params, BATCH_DATA, jax.random.PRNGKey(1))
  other = train(params, BATCH_DATA, jax.random.PRNGKey(2))
  name = 'cross_sequence_output'
  np.testing.assert_array_equal(first[name], again[name])
  assert np.abs(np.asarray(first[name]) - np.asarray(other[name])).max() > 1e-2
  assert np.abs(np.asarray(first[name]) - np.asarray(float32_outputs[name])).max() > 1e-2
  # The embedding dropout zeroes about 10% of the uni-modal inputs.
  embed = jax.jit(lambda p, b, key: model.apply(
      {'params': p}, b['input_ids_a'], b['token_type_ids_a'], False, rngs={'dropout': key},
      method=lambda m, *a: m.backbone.embeddings(*a)))(params, BATCH_DATA, jax.random.PRNGKey(3))
  assert 0.03 < float(jnp.mean(embed == 0)) < 0.2
  with pytest.raises(Exception, match='dropout'):
    model.apply({'params': params}, BATCH_DATA, deterministic=False, run_cross=False)


def test_cross_tag_slots_lengthen_the_cross_sequence(params, float32_outputs):
  slots = 2
  config = CONFIG.replace(cross_tag_slots=slots)
  outputs = _forward(config, hard_negatives=HARD)(params, BATCH_DATA)
  assert float32_outputs['cross_sequence_output'].shape == (BATCH, TEXT + REGIONS, 32)
  # Spec §10.1: the cross sequence is text + the last `slots` tag slots + regions.
  assert outputs['cross_sequence_output'].shape == (BATCH, TEXT + slots + REGIONS, 32)
  assert outputs['hard_sequence_output'].shape == (BATCH, TEXT + slots + REGIONS, 32)
  assert outputs['mlm_logits'].shape == (BATCH, TEXT, CONFIG.word_vocab_size)
  # Exactly vis_out[:, T - slots:] with its mask enters the cross encoder.
  model = model_lib.MVPPretrainingModel(config)
  mask_b = BATCH_DATA['attention_mask_b']
  manual, pooled, _ = jax.jit(lambda p, *a: model.apply(
      {'params': p}, *a, method=lambda m, *x: m.backbone.encode_cross(*x)))(
          params, outputs['txt_encoder_output'], BATCH_DATA['attention_mask_a'],
          outputs['vis_encoder_output'][:, TAGS - slots:], mask_b[:, TAGS - slots:])
  np.testing.assert_allclose(manual, outputs['cross_sequence_output'], atol=1e-6, rtol=0)
  np.testing.assert_allclose(pooled, outputs['pooled_output'], atol=1e-6, rtol=0)
  # The uni-modal outputs do not depend on the option; the cross-modal ones do.
  np.testing.assert_array_equal(outputs['vis_encoder_output'],
                                float32_outputs['vis_encoder_output'])
  change = np.abs(np.asarray(outputs['cross_sequence_output'][:, :TEXT])
                  - np.asarray(float32_outputs['cross_sequence_output'][:, :TEXT])).max()
  assert change > 1e-3  # float noise would be ~1e-7
