"""Zero-shot tags with the text tower (mvp_jax/vision/tags.py) and the SentencePiece tokenizer."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from mvp_jax.vision import tags
from mvp_jax.vision import tokenizer as tokenizer_lib
from mvp_jax.vision import towers
from mvp_jax.vision.config import SiglipConfig, TextConfig

WIDTH, LEN, EOS = 16, 4, 1
LABELS = ['dog', 'cat', 'kite', 'horse', 'tree', 'boat']


def _aligned_text_tower(targets):
  """A text tower whose pooled output for [token l, EOS, EOS, EOS] points along targets[l].

  Attention is uniform (zero query/key), values and output are the identity, the MLP adds 0,
  EOS embeds to 0, the head is the identity: pooled = LN(LN(e_l) / LEN), parallel to e_l for
  zero-mean e_l.
  """
  config = SiglipConfig(vision=None, text=TextConfig(
      vocab_size=len(targets) + 2, width=WIDTH, depth=1, num_heads=2, mlp_dim=8, max_len=LEN,
      projection_size=WIDTH))
  params = jax.tree.map(np.asarray, towers.init_params(config, jax.random.PRNGKey(0)))
  txt = params['txt']
  txt['token_embedding']['embedding'] = np.zeros((len(targets) + 2, WIDTH), np.float32)
  txt['token_embedding']['embedding'][2:] = targets
  txt['pos_embedding'] = np.zeros_like(txt['pos_embedding'])
  block = txt['encoder']['block_0']
  eye = np.eye(WIDTH, dtype=np.float32)
  for name in ('query', 'key'):
    block['attention'][name]['kernel'] = np.zeros_like(block['attention'][name]['kernel'])
  block['attention']['value']['kernel'] = eye.reshape(WIDTH, 2, WIDTH // 2)
  block['attention']['out']['kernel'] = eye.reshape(2, WIDTH // 2, WIDTH)
  block['mlp']['fc2']['kernel'] = np.zeros_like(block['mlp']['fc2']['kernel'])
  txt['head']['kernel'] = eye
  return config, params


def test_tower_built_to_align_picks_exactly_those_labels():
  rng = np.random.default_rng(0)
  basis, _ = np.linalg.qr(rng.standard_normal((WIDTH, WIDTH)))
  centred = basis - basis.mean(axis=0, keepdims=True)  # zero-mean columns, still independent
  targets = np.linalg.qr(centred[:, :len(LABELS)])[0].T.astype(np.float32)
  targets -= targets.mean(axis=1, keepdims=True)
  config, params = _aligned_text_tower(targets)
  tower = towers.TextTower(config)
  embed = jax.jit(lambda ids: tower.apply({'params': params['txt']}, ids)['pooled'])
  ids_of = {label: i + 2 for i, label in enumerate(LABELS)}

  def tokenize(prompts):
    return np.array([[ids_of[p]] + [EOS] * (LEN - 1) for p in prompts], np.int32)

  label_emb = tags.label_embeddings(embed, tokenize, LABELS, templates=('{}',), batch_size=4)
  unit = targets / np.linalg.norm(targets, axis=1, keepdims=True)
  np.testing.assert_allclose(label_emb, unit, atol=1e-5)

  # Image 0 shows a kite and a boat (kite stronger), image 1 a dog only, image 2 nothing known.
  images = np.stack([0.8 * unit[2] + 0.6 * unit[5], unit[0],
                     np.linalg.svd(unit)[2][-1]])  # orthogonal to every label
  probs = tags.label_probs(jnp.asarray(images), jnp.asarray(label_emb), 10.0, -5.0)
  index, values, kept = tags.top_labels(probs, 3, 0.5)
  picked = [[LABELS[i] for i, k in zip(row, keep) if k] for row, keep in
            zip(np.asarray(index), np.asarray(kept))]
  assert picked == [['kite', 'boat'], ['dog'], []]
  index1, _, kept1 = tags.top_labels(probs, 1, 0.5)
  assert [LABELS[i] for i in np.asarray(index1)[:2, 0]] == ['kite', 'dog']
  assert not np.asarray(kept1)[2, 0]
  np.testing.assert_allclose(np.asarray(values)[1, 0], 1 / (1 + np.exp(-5.0)), rtol=1e-5)


def test_region_tags_threshold_and_top_t():
  probs = np.array([[0.9, 0.1, 0.0],   # label 0
                    [0.2, 0.7, 0.1],   # label 1
                    [0.1, 0.2, 0.3],   # below threshold
                    [0.0, 0.1, 0.6],   # label 2, the weakest
                    [0.95, 0.0, 0.0]])  # label 0 again
  labels = ['man', 'horse', 'hat']
  assert tags.region_tags(probs, labels, 3, 0.5) == ['man', 'horse', '', 'hat', 'man']
  assert tags.region_tags(probs, labels, 2, 0.5) == ['man', 'horse', '', '', 'man']
  assert tags.region_tags(probs, labels, 3, 0.96) == [''] * 5


def test_default_labels_are_the_1600_visual_genome_classes(tmp_path):
  labels = tags.load_labels()
  assert len(labels) == 1600 == len(set(labels))
  assert labels[:4] == ['man', 'window', 'tree', 'person'] and 'tennis racket' in labels
  (tmp_path / 'bad.txt').write_text('dog\ncat\ndog\n')
  with pytest.raises(ValueError, match=r'bad.txt:3: label .dog. repeats line 1'):
    tags.load_labels(str(tmp_path / 'bad.txt'))


def _train_sentencepiece(tmp_path):
  sentencepiece = pytest.importorskip('sentencepiece')
  corpus = tmp_path / 'corpus.txt'
  words = ['a photo of a dog', 'a photo of a cat', 'the horse runs', 'kites in the sky',
           'two boats on a lake', 'a tennis racket', 'trees and grass']
  corpus.write_text('\n'.join(words * 20))
  prefix = tmp_path / 'spiece'
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(prefix), vocab_size=30, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, model_type='unigram', character_coverage=1.0)
  return str(prefix) + '.model'


def test_tokenizer_matches_transformers_siglip_tokenizer(tmp_path):
  transformers = pytest.importorskip('transformers')
  model_file = _train_sentencepiece(tmp_path)
  texts = ['A photo of a Dog!', 'kites,   in the sky.', 'two boats on a lake ' * 5, '']
  ours = tokenizer_lib.SiglipTokenizer(model_file, max_len=12)(texts)
  hf = transformers.SiglipTokenizer(vocab_file=model_file)
  theirs = hf(texts, padding='max_length', max_length=12, truncation=True)['input_ids']
  for text, a, b in zip(texts, ours.tolist(), theirs):
    if len(hf(text)['input_ids']) <= 12:  # HF truncation may drop the EOS; ours keeps it
      assert a == b, text
  assert ours.shape == (4, 12) and (ours[:, -1] == EOS).all()  # EOS-padded: last is EOS
  tok = tokenizer_lib.SiglipTokenizer(model_file, max_len=12)
  assert tok.encode('A photo of a Dog!') == tok.encode('a photo of a dog') and ours[3, 0] == EOS
  folder = tmp_path / 'ckpt'
  folder.mkdir()
  (folder / 'spiece.model').write_bytes(open(model_file, 'rb').read())
  assert tokenizer_lib.find_tokenizer(str(folder)).endswith('spiece.model')
  gemma_style = tokenizer_lib.SiglipTokenizer(model_file, max_len=12, variant='siglip2')
  assert gemma_style(['a dog'])[0, -1] == 0  # SigLIP 2 pads with the pad id
