"""Parity with the authors' PyTorch model: golden_tiny.npz outputs reproduced to <= 1e-5.

Every test runs on the unpadded model and on the same checkpoint loaded with `vocab_multiple=128`
(300 -> 384 table rows, 200 -> 256 decoder rows): the real rows' logits equal the golden ones and
the padding columns hold `layers.MASKED_LOGIT`.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import mvp_jax
from mvp_jax import convert
from mvp_jax import layers
from mvp_jax import losses
from mvp_jax import negatives

TOLERANCE = 1e-5
# Golden output name -> our output name (the rest are identical).
RENAMED = {'mul_encoder_layer0_output': 'mid_output'}


@pytest.fixture(scope='module')
def golden(reference_dir):
  with np.load(reference_dir / 'golden_tiny.npz') as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope='module', params=[1, 128], ids=['unpadded', 'vocab_multiple_128'])
def converted(golden, request):
  state = {k[len('param/'):]: v for k, v in golden.items() if k.startswith('param/')}
  config, params = mvp_jax.load_checkpoint(state, num_heads=4, vocab_multiple=request.param)
  return state, config, params


@pytest.fixture(scope='module')
def outputs(golden, converted):
  _, config, params = converted
  batch = {k[len('input/'):]: jnp.asarray(v) for k, v in golden.items()
           if k.startswith('input/')}
  model = mvp_jax.MVPPretrainingModel(config)
  hard = (golden['output/hard_txt_index'], golden['output/hard_img_index'])
  return {k: np.asarray(v) for k, v in model.apply(
      {'params': params}, batch, hard_negatives=hard, return_layer=0).items()}


def test_config_inferred_from_state_dict(converted):
  _, config, params = converted
  assert (config.vocab_size, config.word_vocab_size, config.hidden_size) == (300, 200, 32)
  padded = config.vocab_multiple == 128
  assert (config.padded_vocab_size, config.padded_word_vocab_size) == (
      (384, 256) if padded else (300, 200))
  table = np.asarray(params['backbone']['embeddings']['word_embeddings']['embedding'])
  assert table.shape == (config.padded_vocab_size, 32)
  assert not table[300:].any() and not np.asarray(params['mlm_head']['decoder'])[200:].any()
  assert (config.num_text_layers, config.num_visual_layers, config.num_cross_layers) == (2, 2, 2)
  assert config.use_region_layernorm and config.qa_num_answers == 7


@pytest.mark.parametrize('name', [
    'txt_encoder_output', 'vis_encoder_output', 'cross_sequence_output', 'pooled_output',
    'sim_mat', 'hard_sequence_output', 'hard_pooled_output', 'itm_logits', 'mlm_logits',
    'vis_mlm_logits', 'mul_encoder_layer0_output'])
def test_output_matches_reference(golden, outputs, name):
  ours = outputs[RENAMED.get(name, name)]
  reference = golden[f'output/{name}']
  if name.endswith('mlm_logits') and ours.shape[-1] != reference.shape[-1]:  # padded vocabulary
    assert ours.shape[-1] == 256 and reference.shape[-1] == 200
    np.testing.assert_array_equal(ours[..., 200:], layers.MASKED_LOGIT)
    ours = ours[..., :200]
  assert ours.shape == reference.shape
  np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_contrastive_logits_and_loss(golden, outputs):
  logits = outputs['sim_mat'] * np.exp(outputs['logit_scale'])
  np.testing.assert_allclose(logits, golden['output/itc_logits'], atol=1e-4 * 15, rtol=1e-5)
  loss, _ = losses.contrastive_loss(jnp.asarray(outputs['sim_mat']), outputs['logit_scale'])
  np.testing.assert_allclose(loss, golden['output/itc_loss'], atol=TOLERANCE)


def test_phrase_region_cosines(golden, outputs):
  start, end = golden['input/phrase_index'][0]
  first, last = golden['input/img_index'][0]
  sequence = outputs['cross_sequence_output'][0]
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cosines = unit(sequence[start:end]) @ unit(sequence[first:last]).T
  np.testing.assert_allclose(cosines, golden['output/wpg_cos_sample0'], atol=TOLERANCE)


def test_reference_negatives_are_the_hardest(golden, outputs):
  """The golden pairs are what our miner picks for the permutation they imply."""
  sim = outputs['sim_mat'] - 2 * np.eye(4)
  txt, img = golden['output/hard_txt_index'], golden['output/hard_img_index']
  np.testing.assert_array_equal(img[:2], sim.argmax(1)[txt[:2]])  # text side: hardest image
  np.testing.assert_array_equal(txt[2:], sim.argmax(0)[img[2:]])  # image side: hardest text
  # Our miner, with a permutation giving the same text-side samples, reproduces the pairs.
  for seed in range(200):
    mined_txt, mined_img = negatives.mine_hard_negatives(
        __import__('jax').random.PRNGKey(seed), jnp.asarray(outputs['sim_mat']))
    if list(mined_txt[:2]) == list(txt[:2]) and list(mined_img[2:]) == list(img[2:]):
      np.testing.assert_array_equal(mined_img, img)
      np.testing.assert_array_equal(mined_txt, txt)
      return
  pytest.fail('No permutation in 200 seeds reproduced the reference split.')


def test_round_trip_to_torch_names(converted):
  state, config, params = converted
  back = convert.params_to_torch(params, config)
  assert set(back) == set(state)
  for name, value in state.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_base_config_names_and_shapes(reference_dir):
  """Our params of the base config export to exactly the authors' 316 names and shapes."""
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  expected = json.loads((reference_dir / 'state_dict_shapes.json').read_text())
  config = mvp_jax.config.base().replace(qa_num_answers=3129)  # vocabulary padded to 128
  assert (config.padded_vocab_size, config.padded_word_vocab_size) == (86144, 30592)
  shapes = jax.eval_shape(lambda: mvp_jax.init_params(config, jax.random.PRNGKey(0)))
  fake = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32),
                                __import__('flax').linen.unbox(shapes))
  exported = {k: list(v.shape) for k, v in convert.params_to_torch(fake, config).items()}
  assert exported == {k: list(v) for k, v in expected.items()}
  total = sum(int(np.prod(v)) for v in exported.values())
  assert total == 247_948_464
