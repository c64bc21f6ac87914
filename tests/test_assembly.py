"""Tests of input_pipeline.assembly: the exact token layout of spec §1.2."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import concepts
from input_pipeline import tokenizers
from input_pipeline import train_vocab

WORDS = ['a', 'man', 'rides', 'horse', 'on', 'the', 'beach', 'two', 'dogs', 'dog', 'tree',
         'red', 'ball', 'sky', 'blue', 'ride', 'under']
CLS, SEP, PAD = 2, 3, 0


_SIGNATURE = (tf.TensorSpec([], tf.string),
              tf.RaggedTensorSpec([None, None], tf.string, ragged_rank=1,
                                  row_splits_dtype=tf.int64),
              tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.string),
              tf.TensorSpec([None, 8], tf.float32))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('vocab') / 'vocab.txt')
  train_vocab.write_vocab(WORDS, path)
  tok = tokenizers.load_tokenizer(path)
  w = {word: tok.token_to_id(word) for word in WORDS}
  v = tok.vocab_size
  vocab = concepts.ConceptVocab({
      w['man']: ('man',), w['horse']: ('horse',), w['dog']: ('dog',), w['tree']: ('tree',),
      w['sky']: ('sky',), w['beach']: ('beach',), v: ('man', 'ride', 'horse'),
      v + 1: ('dog', 'under', 'tree'), v + 2: ('sky', 'blue'), v + 3: ('ball', 'red')}, v)
  # One graph-mode function (traced once) serves the tests using the default lengths.
  assemble = tf.function(
      assembly.ExampleAssembler(tok, vocab, assembly.Lengths(10, 2, 6, 3)),
      input_signature=_SIGNATURE)
  return tok, vocab, w, v, assemble


def _assemble(assemble, caption, phrases, regions, tags, feats):
  """Runs a graph-mode assembler on one hand-made example; returns numpy arrays."""
  phrase_tensor = tf.RaggedTensor.from_row_lengths(
      tf.constant([x for p in phrases for x in p], tf.string),
      tf.constant([len(p) for p in phrases], tf.int64))
  out = assemble(tf.constant(caption), phrase_tensor, tf.constant(regions, tf.int32),
                 tf.constant(tags, tf.string), tf.constant(feats, tf.float32))
  return {k: v.numpy() for k, v in out.items()}


def test_pretraining_layout_exact(setup):
  _, _, w, v, asm = setup
  feats = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
  out = _assemble(asm, 'A man rides a horse', [('man',), ('unicorn',), ('man', 'ride', 'horse'),
                                               ('horse',)], [2, 1, 3, -1],
                  ['dog', 'man', 'dog', 'tree'], feats)
  a, man, rides, horse = w['a'], w['man'], w['rides'], w['horse']
  np.testing.assert_array_equal(out['input_ids_a'],
                                [CLS, a, man, rides, a, horse, man, v, horse, SEP, PAD, PAD])
  np.testing.assert_array_equal(out['attention_mask_a'], [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(out['token_type_ids_a'], [0] * 12)
  np.testing.assert_array_equal(out['phrase_index'], [6, 9])
  # Region 3 does not survive truncation to R=3; the unknown phrase is dropped with its region.
  np.testing.assert_array_equal(out['phrase_region_links'], [-1] * 6 + [2, -1, -1] + [-1] * 3)
  links = np.argwhere(out[assembly.PHRASE_WORD_LINKS]).tolist()
  assert links == [[6, 2], [7, 2], [7, 5], [8, 5]]  # "rides" is not the word "ride".
  np.testing.assert_array_equal(out['input_ids_b'], [CLS, w['dog'], man, w['tree'], SEP, PAD])
  np.testing.assert_array_equal(out['token_type_ids_b'], [1] * 6)
  np.testing.assert_array_equal(out['attention_mask_b'], [1] * 5 + [0] + [1] * 3)
  np.testing.assert_array_equal(out['img_feats'], feats[:3])
  np.testing.assert_array_equal(out['img_index'], [12, 15])


def test_short_caption_carries_more_than_p_phrases(setup):
  _, _, w, v, asm = setup
  phrases = [('dog',), ('tree',), ('sky',), ('beach',), ('sky', 'blue'), ('ball', 'red'),
             ('dog', 'under', 'tree')]
  out = _assemble(asm, 'two dogs', phrases, [0, 1, 2, 3, 4, -1, 0], [], np.zeros((0, 8),
                                                                             np.float32))
  # La = 12: [CLS] + 2 words + min(7, 12 - 2 - 2) = 8 -> all 7 phrases fit although P = 2.
  np.testing.assert_array_equal(
      out['input_ids_a'], [CLS, w['two'], w['dogs'], w['dog'], w['tree'], w['sky'], w['beach'],
                           v + 2, v + 3, v + 1, SEP, PAD])
  np.testing.assert_array_equal(out['phrase_index'], [3, 10])
  # No regions at all: every link is cut, the visual stream is [CLS] [SEP] and zero rows.
  np.testing.assert_array_equal(out['phrase_region_links'], [-1] * 12)
  np.testing.assert_array_equal(out['input_ids_b'], [CLS, SEP] + [PAD] * 4)
  np.testing.assert_array_equal(out['attention_mask_b'], [1, 1] + [0] * 4 + [0] * 3)
  np.testing.assert_array_equal(out['img_index'], [12, 12])
  assert not out['img_feats'].any()


def test_long_caption_truncates_words_then_phrases(setup):
  _, _, w, _, asm = setup
  caption = 'a man rides a horse on the beach under a red sky'  # 12 words.
  out = _assemble(asm, caption, [('man',), ('sky',), ('beach',), ('man', 'ride', 'horse')],
                  [0, 1, 1, 0], ['sky'] * 2, np.ones((2, 8), np.float32))
  words = [w[x] for x in caption.split()[:8]]
  np.testing.assert_array_equal(out['input_ids_a'], [CLS] + words + [w['man'], w['sky'], SEP])
  np.testing.assert_array_equal(out['attention_mask_a'], [1] * 12)
  np.testing.assert_array_equal(out['phrase_index'], [9, 11])
  np.testing.assert_array_equal(out['phrase_region_links'], [-1] * 9 + [0, 1, -1])
  # "sky" was cut from the words, so the phrase (sky) links to no word.
  assert np.argwhere(out[assembly.PHRASE_WORD_LINKS]).tolist() == [[9, 2]]


def test_layout_options_tags_as_list_and_no_phrases(setup):
  tok, vocab, w, _, _ = setup
  options = assembly.LayoutOptions(use_phrases=False, tags_as_list=True)
  asm = tf.function(assembly.ExampleAssembler(tok, vocab, assembly.Lengths(6, 2, 5, 4), options),
                    input_signature=_SIGNATURE)
  out = _assemble(asm, 'a dog', [('dog',)], [0], ['dog', 'tree', 'dog', 'sky'],
                  np.ones((4, 8), np.float32))
  np.testing.assert_array_equal(out['input_ids_a'], [CLS, w['a'], w['dog'], SEP] + [PAD] * 4)
  np.testing.assert_array_equal(out['phrase_index'], [3, 3])
  # T = 5 leaves room for 3 of the 4 tags, duplicates kept in region order.
  np.testing.assert_array_equal(out['input_ids_b'], [CLS, w['dog'], w['tree'], w['dog'], SEP])
  np.testing.assert_array_equal(out['attention_mask_b'], [1] * 5 + [1] * 4)
