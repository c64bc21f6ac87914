"""Independent parity: our text encoder reproduces a random Hugging Face `BertModel`.

The golden test checks the authors' model; this one checks the same layers against a second,
independently written implementation, through the converter's BERT renaming.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import mvp_jax
from mvp_jax import convert
from mvp_jax import hf_bert

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB, HIDDEN, HEADS, LAYERS, MLP, POSITIONS = 120, 32, 4, 2, 64, 40
BATCH, LENGTH = 3, 10


@pytest.fixture(scope='module')
def bert():
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
      intermediate_size=MLP, max_position_embeddings=POSITIONS, type_vocab_size=2,
      hidden_act='gelu', hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
  model = transformers.BertModel(config).eval()
  # HF zero-initialises biases and sets LayerNorms to identity; random values make every tensor
  # (and a swapped query/key bias, say) visible in the output.
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.normal_(0.0, 0.2)
  return model


@pytest.fixture(scope='module')
def config():
  return mvp_jax.config.tiny(vocab_size=VOCAB, word_vocab_size=100, hidden_size=HIDDEN,
                             num_heads=HEADS, mlp_dim=MLP, num_text_layers=LAYERS,
                             max_position_embeddings=POSITIONS, region_feature_dim=16)


@pytest.fixture(scope='module')
def inputs():
  rng = np.random.RandomState(0)
  ids = rng.randint(0, VOCAB, (BATCH, LENGTH)).astype(np.int64)
  types = rng.randint(0, 2, (BATCH, LENGTH)).astype(np.int64)
  lengths = np.array([LENGTH, 6, 3])
  mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
  return ids, types, mask


def _backbone_params(bert_model, config):
  """Our backbone params: the text side converted from BERT, everything else zeros."""
  state = hf_bert.bert_to_mvp_names(bert_model.state_dict(), target='txt_encoder')
  entries = [e for e in convert.backbone_entries(config) if e.torch_name in state]
  assert len(entries) == len(state)  # every BERT tensor has a destination
  converted = traverse_util.flatten_dict(
      convert.torch_to_params(state, config, entries)['backbone'])
  shapes = jax.eval_shape(lambda: mvp_jax.init_params(config, jax.random.PRNGKey(0)))
  flat = traverse_util.flatten_dict(jax.tree_util.tree_map(
      lambda s: np.zeros(s.shape, s.dtype), mvp_jax.convert._unbox(shapes['backbone'])))
  assert set(converted) <= set(flat)
  flat.update(converted)
  return traverse_util.unflatten_dict(flat), converted


def test_bert_names_are_renamed_to_mvptr(bert):
  state = bert.state_dict()
  renamed = hf_bert.bert_to_mvp_names(state, target=('txt_encoder', 'mul_encoder'), layers=[1])
  assert 'bert.embeddings.word_embeddings.weight' in renamed
  assert 'bert.pooler.dense.bias' in renamed
  assert not any('position_ids' in k for k in renamed)
  # HF layer 1 becomes layer 0 of both encoders; HF layer 0 is left out.
  key = 'attention.self.query.weight'
  assert renamed[f'bert.txt_encoder.layer.0.{key}'] is state[f'encoder.layer.1.{key}']
  assert renamed[f'bert.mul_encoder.layer.0.{key}'] is state[f'encoder.layer.1.{key}']
  assert not any('.layer.1.' in k for k in renamed)
  # A BertForPreTraining-style `bert.` prefix and `cls.*` heads.
  prefixed = {f'bert.{k}': v for k, v in state.items()}
  prefixed['cls.seq_relationship.weight'] = np.zeros((2, HIDDEN))
  renamed_prefixed = hf_bert.bert_to_mvp_names(prefixed)
  assert 'cls.seq_relationship.weight' in renamed_prefixed
  assert set(renamed_prefixed) - {'cls.seq_relationship.weight'} == set(
      hf_bert.bert_to_mvp_names(state))
  with pytest.raises(convert.ConversionError, match=r'\[5\]'):
    hf_bert.bert_to_mvp_names(state, layers=[0, 5])
  with pytest.raises(ValueError, match='target'):
    hf_bert.bert_to_mvp_names(state, target='encoder')


def test_text_encoder_matches_hf_bert(bert, config, inputs):
  ids, types, mask = inputs
  with torch.no_grad():
    reference = bert(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                     attention_mask=torch.from_numpy(mask))
  expected = reference.last_hidden_state.numpy()
  params, converted = _backbone_params(bert, config)
  assert len(converted) == 5 + LAYERS * 16 + 2  # embeddings + layers + pooler
  batch = dict(input_ids_a=jnp.asarray(ids, jnp.int32), token_type_ids_a=jnp.asarray(types,
                                                                                      jnp.int32),
               attention_mask_a=jnp.asarray(mask, jnp.int32))
  ours = np.asarray(mvp_jax.MVPBackbone(config).apply(
      {'params': params}, batch, method=mvp_jax.MVPBackbone.encode_text))
  assert ours.shape == expected.shape == (BATCH, LENGTH, HIDDEN)
  assert np.abs(expected).max() > 0.5  # a non-trivial output
  # HF masks with the dtype's minimum, we with −10000: both give padded keys ~0 probability, so
  # every position (padded queries included) agrees.
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
  pooled = mvp_jax.MVPBackbone(config).apply({'params': params}, jnp.asarray(ours),
                                             method=lambda m, x: m.pooler(x))
  np.testing.assert_allclose(pooled, reference.pooler_output.numpy(), atol=1e-5, rtol=0)
  # The padding really is masked: changing padded tokens leaves real positions unchanged.
  changed = dict(batch, input_ids_a=batch['input_ids_a'].at[2, 5:].set(7))
  again = np.asarray(mvp_jax.MVPBackbone(config).apply(
      {'params': params}, changed, method=mvp_jax.MVPBackbone.encode_text))
  np.testing.assert_allclose(again[2, :3], ours[2, :3], atol=1e-6, rtol=0)
  assert np.abs(again[2, 5:] - ours[2, 5:]).max() > 1e-2
