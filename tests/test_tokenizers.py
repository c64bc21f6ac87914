"""Tests of input_pipeline.tokenizers and input_pipeline.train_vocab."""

import pytest
import tensorflow as tf

from input_pipeline import tokenizers
from input_pipeline import train_vocab

WORDS = ['a', 'man', 'ride', '##s', '##ing', 'horse', 'on', 'beach', '.', ',', 'two', 'dog']


def _bert_like_vocab(path):
  """[PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, then words."""
  vocab = (['[PAD]'] + [f'[unused{i}]' for i in range(99)]
           + ['[UNK]', '[CLS]', '[SEP]', '[MASK]'] + WORDS)
  path.write_text('\n'.join(vocab) + '\n')
  return str(path)


def test_bert_layout_special_ids_and_wordpiece(tmp_path):
  tok = tokenizers.load_tokenizer(_bert_like_vocab(tmp_path / 'vocab.txt'))
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert tok.vocab_size == 104 + len(WORDS)
  assert tok.num_special == 104
  ids = tok.tokenize('A man rides, Horses a ZEBRA.').numpy().tolist()
  word = {w: 104 + i for i, w in enumerate(WORDS)}
  assert ids == [word['a'], word['man'], word['ride'], word['##s'], word[','], word['horse'],
                 word['##s'], word['a'], 100, word['.']]
  assert tok.id_to_token(word['horse']) == 'horse'
  assert tok.token_to_id('horse') == word['horse'] and tok.token_to_id('zebra') is None


def test_compact_vocab_special_tokens_never_split(tmp_path):
  train_vocab.write_vocab(WORDS, str(tmp_path / 'vocab.txt'))
  tok = tokenizers.load_tokenizer(str(tmp_path / 'vocab.txt'))
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.num_special == 5
  got = tok.tokenize(['a [MASK] on a horse', 'man[MASK].[SEP]']).to_list()
  man, on, horse, a, dot = (tok.token_to_id(w) for w in ('man', 'on', 'horse', 'a', '.'))
  assert got == [[a, 4, on, a, horse], [man, 4, dot, 3]]
  grouped = tok.tokenize_words('rides horses').to_list()
  assert grouped == [[tok.token_to_id('ride'), tok.token_to_id('##s')],
                     [horse, tok.token_to_id('##s')]]


def test_tokenize_inside_tf_data_matches_eager(tmp_path):
  train_vocab.write_vocab(WORDS, str(tmp_path / 'vocab.txt'))
  tok = tokenizers.load_tokenizer(str(tmp_path / 'vocab.txt'))
  captions = ['a man riding', 'two dogs on a beach .', '']
  ds = tf.data.Dataset.from_tensor_slices(captions).map(tok.tokenize)
  graph = [x.tolist() for x in ds.as_numpy_iterator()]
  assert graph == [tok.tokenize(c).numpy().tolist() for c in captions]
  assert graph[2] == []


def test_sentencepiece_roles_and_special_tokens(tmp_path):
  corpus = ['a man riding a horse on the beach', 'two dogs play with a red ball',
            'a woman holds an umbrella in the rain'] * 30
  path = str(tmp_path / 'spm.model')
  train_vocab.train_sentencepiece(corpus, 40, path)
  tok = tokenizers.load_tokenizer(path)
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.num_special == 5 and 30 < tok.vocab_size <= 40
  ids = tok.tokenize('A man [MASK] a horse').numpy().tolist()
  assert ids.count(4) == 1 and 1 not in ids
  assert ids == (tok.tokenize('a man').numpy().tolist() + [4]
                 + tok.tokenize('a horse').numpy().tolist())


def test_train_wordpiece_vocab_has_specials_first(tmp_path):
  corpus = ['a man riding a horse on the beach', 'two dogs play with a red ball'] * 20
  path = str(tmp_path / 'vocab.txt')
  train_vocab.train_wordpiece(corpus, 200, path)
  tok = tokenizers.load_tokenizer(path)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.unk_id not in tok.tokenize('two dogs riding a horse').numpy().tolist()


def test_bad_vocabularies_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match='not a single lowercase word'):
    train_vocab.write_vocab(['red ball'], str(tmp_path / 'v.txt'))
  (tmp_path / 'nospecial.txt').write_text('a\nb\n')
  with pytest.raises(ValueError, match=r'missing special tokens'):
    tokenizers.WordPieceTokenizer(str(tmp_path / 'nospecial.txt'))
  (tmp_path / 'x.json').write_text('{}')
  with pytest.raises(ValueError, match='unknown tokenizer file'):
    tokenizers.load_tokenizer(str(tmp_path / 'x.json'))
