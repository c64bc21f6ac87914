"""Hugging Face BERT folders as a `weights.load` source (seeding a fresh MVPTR) and the text-encoder
export (`mvp_jax/hf_bert.py`)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mvp_jax
from input_pipeline import concepts
from input_pipeline import tokenizers
from mvp_jax import hf_bert
from mvp_jax import weights

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

HIDDEN, HEADS, MLP, POSITIONS, BERT_LAYERS = 32, 4, 64, 40, 4
SPECIAL = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
WORDS = ['a', 'red', 'blue', 'circle', 'square', 'left', 'of', 'the', 'big', '##s', 'is', 'on']
BATCH, LENGTH = 3, 9


@pytest.fixture(scope='module')
def bert_dir(tmp_path_factory):
  """A random BertModel (every tensor perturbed) saved with its vocab.txt."""
  torch.manual_seed(0)
  vocab = SPECIAL + WORDS + [f'w{i}' for i in range(8)]
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=HIDDEN, num_attention_heads=HEADS,
      num_hidden_layers=BERT_LAYERS, intermediate_size=MLP, max_position_embeddings=POSITIONS,
      type_vocab_size=2, hidden_act='gelu')
  model = transformers.BertModel(config).eval()
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.normal_(0.0, 0.2)
  directory = tmp_path_factory.mktemp('bert')
  model.save_pretrained(directory)
  (directory / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  return directory


@pytest.fixture(scope='module')
def bert_model(bert_dir):
  return transformers.BertModel.from_pretrained(bert_dir).eval()


@pytest.fixture(scope='module')
def vocabularies(bert_dir, tmp_path_factory):
  """The dataset tokenizer (= BERT's vocab), a concept vocabulary with 3 new rows, their folder."""
  tokenizer = tokenizers.load_tokenizer(str(bert_dir / 'vocab.txt'))
  rows = tokenizer.vocab_size
  concept_vocab = concepts.ConceptVocab(
      {tokenizer.token_to_id('circle'): ['circle'], rows: ['circle', 'red'],
       rows + 1: ['square', 'left of', 'circle'], rows + 2: ['circles', 'big']}, rows)
  data_dir = tmp_path_factory.mktemp('data')
  (data_dir / 'vocab.txt').write_text((bert_dir / 'vocab.txt').read_text())
  concept_vocab.save(str(data_dir / 'id2phrase.json'))
  return tokenizer, concept_vocab, str(data_dir)


def model_config(tokenizer, **overrides):
  values = dict(vocab_size=tokenizer.vocab_size + 3, word_vocab_size=tokenizer.vocab_size,
                hidden_size=HIDDEN, num_heads=HEADS, mlp_dim=MLP, num_text_layers=2,
                num_visual_layers=2, num_cross_layers=2, max_position_embeddings=POSITIONS,
                region_feature_dim=16)
  values.update(overrides)
  return mvp_jax.config.tiny(**values)


def fresh_params(config, seed=3):
  return nn.unbox(jax.jit(functools.partial(mvp_jax.init_params, config))(
      jax.random.PRNGKey(seed)))


@pytest.fixture(scope='module')
def imported(bert_dir, vocabularies):
  """`--config.init_from=BERT_DIR`: weights.load of the folder into a fresh pre-training model."""
  tokenizer, _, data_dir = vocabularies
  config = model_config(tokenizer)
  params, report = weights.load(str(bert_dir), fresh_params(config), model_config=config,
                                vocab_dir=data_dir)
  return config, params, report


@pytest.fixture(scope='module')
def text_inputs():
  rng = np.random.RandomState(0)
  ids = rng.randint(0, 20, (BATCH, LENGTH))
  types = rng.randint(0, 2, (BATCH, LENGTH))
  mask = (np.arange(LENGTH)[None] < np.array([[LENGTH], [6], [3]])).astype(np.int64)
  return ids, types, mask


def bert_hidden_states(bert_model, ids, types, mask):
  with torch.no_grad():
    out = bert_model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                     attention_mask=torch.from_numpy(mask), output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states], out


def backbone_apply(config, params, fn, *args):
  return np.asarray(mvp_jax.MVPBackbone(config).apply({'params': params['backbone']}, *args,
                                                      method=fn))


def test_split_layers_reproduce_bert(imported, bert_model, text_inputs):
  """text <- BERT 0..1 and cross <- BERT 2..3: text then cross == the whole 4-layer BERT."""
  config, params, report = imported
  assert report.source_kind == 'hf_bert'
  assert "BERT layers {'text': [0, 1], 'visual': [0, 1], 'cross': [2, 3]}" in report.notes[0]
  ids, types, mask = text_inputs
  hidden, _ = bert_hidden_states(bert_model, ids, types, mask)
  batch = dict(input_ids_a=jnp.asarray(ids), token_type_ids_a=jnp.asarray(types),
               attention_mask_a=jnp.asarray(mask))
  text = backbone_apply(config, params, mvp_jax.MVPBackbone.encode_text, batch)
  np.testing.assert_allclose(text, hidden[2], atol=1e-5, rtol=0)
  encoder = lambda name: (lambda m, x, k: getattr(m, name)(x, k, True)[0])
  cross = backbone_apply(config, params, encoder('cross_encoder'), jnp.asarray(hidden[2]),
                         jnp.asarray(mask))
  np.testing.assert_allclose(cross, hidden[4], atol=1e-5, rtol=0)
  visual = backbone_apply(config, params, encoder('visual_encoder'), jnp.asarray(hidden[0]),
                          jnp.asarray(mask))
  np.testing.assert_allclose(visual, hidden[2], atol=1e-5, rtol=0)


def test_embeddings_concepts_decoders_and_fresh_parts(imported, bert_model, vocabularies):
  config, params, report = imported
  tokenizer = vocabularies[0]
  state = {k: v.numpy() for k, v in bert_model.state_dict().items()}
  words = state['embeddings.word_embeddings.weight']
  table = np.asarray(params['backbone']['embeddings']['word_embeddings']['embedding'])
  np.testing.assert_array_equal(table[:len(words)], words)
  rows, piece = tokenizer.vocab_size, tokenizer.token_to_id
  np.testing.assert_allclose(table[rows], words[[piece('circle'), piece('red')]].mean(0),
                             atol=1e-7)
  np.testing.assert_allclose(  # 'left of' is two words; 'circles' is circle + ##s.
      table[rows + 1], words[[piece('square'), piece('left'), piece('of'), piece('circle')]]
      .mean(0), atol=1e-7)
  np.testing.assert_allclose(table[rows + 2],
                             words[[piece('circle'), piece('##s'), piece('big')]].mean(0),
                             atol=1e-7)
  assert '3 concept rows from words' in report.notes[0]
  for head in ('mlm_head', 'concept_head'):
    np.testing.assert_array_equal(params[head]['decoder'], table[:config.word_vocab_size])
  positions = np.asarray(params['backbone']['embeddings']['position_embeddings']['embedding'])
  np.testing.assert_array_equal(positions, state['embeddings.position_embeddings.weight'])
  np.testing.assert_array_equal(params['backbone']['pooler']['dense']['kernel'],
                                state['pooler.dense.weight'].T)
  fresh = fresh_params(config)
  assert {'backbone/region_embedding/img_embedding/kernel', 'itm_head/kernel',
          'concept_head/transform/kernel'} <= set(report.fresh)
  for path in (('backbone', 'region_embedding'), ('backbone', 'text_projection'),
               ('itm_head',), ('concept_head', 'transform')):
    got, want = params, fresh
    for key in path:
      got, want = got[key], want[key]
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-6), got, want)


def test_layer_maps(bert_dir, vocabularies):
  tokenizer = vocabularies[0]
  config = model_config(tokenizer, num_text_layers=3, num_visual_layers=1, num_cross_layers=2)
  resolve = hf_bert.resolve_layer_map
  assert resolve('split', 12, config) == {'text': [0, 1, 2], 'visual': [0], 'cross': [3, 4]}
  assert resolve('bottom', 12, config) == {'text': [0, 1, 2], 'visual': [0], 'cross': [0, 1]}
  assert resolve('text=0-2;visual=5;cross=1,3', 12, config) == {
      'text': [0, 1, 2], 'visual': [5], 'cross': [1, 3]}
  assert resolve({'text': [2, 1, 0], 'visual': [3], 'cross': [3, 3]}, 4, config)['text'] == [
      2, 1, 0]
  with pytest.raises(hf_bert.BertImportError, match='visual encoder, which has 1'):
    resolve('text=0-2;visual=0-1;cross=0-1', 12, config)
  with pytest.raises(hf_bert.BertImportError, match='only 4 layers'):
    resolve('split', 4, model_config(tokenizer, num_text_layers=3, num_cross_layers=3))
  other = model_config(tokenizer, num_heads=2)
  with pytest.raises(hf_bert.BertImportError, match='num_heads: BERT 4, config 2'):
    weights.load(str(bert_dir), fresh_params(other), model_config=other)


def test_by_token_rows_and_layer_map(bert_dir, bert_model, tmp_path):
  """A compact vocabulary in another order takes BERT rows by token when the run's vocabularies
  are given; without them rows are copied by id, which this vocabulary cannot take."""
  ours = SPECIAL + ['square', 'zebra', 'red', 'a']
  (tmp_path / 'vocab.txt').write_text('\n'.join(ours) + '\n')
  (tmp_path / 'id2phrase.json').write_text('{}')
  tokenizer = tokenizers.load_tokenizer(str(tmp_path / 'vocab.txt'))
  config = model_config(tokenizer, vocab_size=len(ours))
  fresh = fresh_params(config)
  with pytest.raises(hf_bert.BertImportError, match='by_token'):
    weights.load(str(bert_dir), fresh, model_config=config)
  params, report = weights.load(str(bert_dir), fresh, model_config=config,
                                vocab_dir=str(tmp_path), bert_layer_map='bottom')
  assert 'word rows by_token (8 copied)' in report.notes[0]  # all but 'zebra'
  assert "'cross': [0, 1]" in report.notes[0]
  words = bert_model.state_dict()['embeddings.word_embeddings.weight'].numpy()
  table = np.asarray(params['backbone']['embeddings']['word_embeddings']['embedding'])
  bert_vocab = (bert_dir / 'vocab.txt').read_text().split('\n')
  for i, token in enumerate(ours):
    want = fresh['backbone']['embeddings']['word_embeddings']['embedding'][i] if (
        token == 'zebra') else words[bert_vocab.index(token)]
    np.testing.assert_array_equal(table[i], want, err_msg=token)
  shapes = jax.eval_shape(lambda: fresh)
  with pytest.raises(weights.WeightsError, match='must hold values, not shapes'):
    weights.load(str(bert_dir), shapes, model_config=config)


def test_text_encoder_export_loads_in_transformers(imported, text_inputs, tmp_path,
                                                   vocabularies):
  config, params, _ = imported
  out = hf_bert.export_text_encoder(params, config, str(tmp_path / 'bert'),
                                    vocabularies[0].path)
  model = transformers.BertModel.from_pretrained(out, local_files_only=True).eval()
  ids, types, mask = text_inputs
  ids = ids.copy()
  ids[0, 3] = config.vocab_size - 1  # a concept row is a valid input too
  _, reference = bert_hidden_states(model, ids, types, mask)
  batch = dict(input_ids_a=jnp.asarray(ids), token_type_ids_a=jnp.asarray(types),
               attention_mask_a=jnp.asarray(mask))
  ours = backbone_apply(config, params, mvp_jax.MVPBackbone.encode_text, batch)
  np.testing.assert_allclose(reference.last_hidden_state.numpy(), ours, atol=1e-5, rtol=0)
  pooled = backbone_apply(config, params, lambda m, x: m.pooler(x), jnp.asarray(ours))
  np.testing.assert_allclose(reference.pooler_output.numpy(), pooled, atol=1e-5, rtol=0)
  assert (tmp_path / 'bert' / 'vocab.txt').exists()


def test_padded_vocabulary_seeds_and_exports_bert_rows(bert_dir, bert_model, vocabularies,
                                                       text_inputs, tmp_path):
  """A model with `vocab_multiple=8`: BERT seeds the real rows, the padding rows stay zero and
  the exported BertModel has the real row count (and the same text encoding)."""
  tokenizer, _, data_dir = vocabularies
  config = model_config(tokenizer, vocab_multiple=8)  # 28 -> 32 table rows, 25 -> 32 decoder rows
  assert (config.vocab_size, config.padded_vocab_size) == (28, 32)
  assert (config.word_vocab_size, config.padded_word_vocab_size) == (25, 32)
  params, _ = weights.load(str(bert_dir), fresh_params(config), model_config=config,
                           vocab_dir=data_dir)
  words = bert_model.state_dict()['embeddings.word_embeddings.weight'].numpy()
  table = np.asarray(params['backbone']['embeddings']['word_embeddings']['embedding'])
  assert table.shape == (32, HIDDEN) and not table[28:].any()
  np.testing.assert_array_equal(table[:len(words)], words)
  for head in ('mlm_head', 'concept_head'):
    decoder = np.asarray(params[head]['decoder'])
    assert decoder.shape == (32, HIDDEN) and not decoder[25:].any()
    np.testing.assert_array_equal(decoder[:25], table[:25])
  out = hf_bert.export_text_encoder(params, config, str(tmp_path / 'bert'), tokenizer.path)
  model = transformers.BertModel.from_pretrained(out, local_files_only=True).eval()
  assert tuple(model.embeddings.word_embeddings.weight.shape) == (28, HIDDEN)
  ids, types, mask = text_inputs
  _, reference = bert_hidden_states(model, ids, types, mask)
  batch = dict(input_ids_a=jnp.asarray(ids), token_type_ids_a=jnp.asarray(types),
               attention_mask_a=jnp.asarray(mask))
  ours = backbone_apply(config, params, mvp_jax.MVPBackbone.encode_text, batch)
  np.testing.assert_allclose(reference.last_hidden_state.numpy(), ours, atol=1e-5, rtol=0)
