"""Tests of input_pipeline.masking (spec §2.2): rates, labels, phrase forcing, determinism."""

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import masking

WORD_VOCAB, NUM_ROWS, MASK = 1000, 1500, 4
LA, N_WORDS, N_PHRASES, T, N_TAGS = 44, 30, 8, 20, 15
PHRASE_START = 1 + N_WORDS
SEP_POS = PHRASE_START + N_PHRASES
NUM_EXAMPLES = 2000


def _example():
  """One assembled example: 30 words, 8 phrases (the first linked to word 1), 15 tags."""
  rng = np.random.default_rng(0)
  ids_a = np.zeros([LA], np.int32)
  ids_a[0], ids_a[SEP_POS] = 2, 3
  ids_a[1:PHRASE_START] = rng.integers(5, WORD_VOCAB, N_WORDS)
  ids_a[PHRASE_START:SEP_POS] = rng.integers(WORD_VOCAB, NUM_ROWS, N_PHRASES)
  ids_b = np.zeros([T], np.int32)
  ids_b[0], ids_b[N_TAGS + 1] = 2, 3
  ids_b[1:N_TAGS + 1] = rng.integers(5, WORD_VOCAB, N_TAGS)
  links = np.zeros([LA, LA], bool)
  links[PHRASE_START, 1] = True
  return {
      'input_ids_a': ids_a, 'attention_mask_a': (np.arange(LA) <= SEP_POS).astype(np.int32),
      'phrase_index': np.array([PHRASE_START, SEP_POS], np.int32), 'input_ids_b': ids_b,
      'attention_mask_b': np.array([1] * (N_TAGS + 2) + [0] * (T - N_TAGS - 2) + [1] * 5,
                                   np.int32),
      assembly.PHRASE_WORD_LINKS: links,
  }


def _run(corruption, seed):
  """Corrupts the example NUM_EXAMPLES times with seeds (seed, i) inside tf.data."""
  example = {k: tf.constant(v) for k, v in _example().items()}
  ds = tf.data.Dataset.range(NUM_EXAMPLES).map(
      lambda i: corruption(example, tf.stack([tf.constant(seed, tf.int64), i])))
  return next(ds.batch(NUM_EXAMPLES).as_numpy_iterator())


@pytest.fixture(scope='module')
def corrupted():
  return _run(masking.Corruption(MASK, WORD_VOCAB, NUM_ROWS), seed=7)


def test_word_rates_and_labels(corrupted):
  original = _example()['input_ids_a']
  ids, labels = corrupted['input_ids_a'], corrupted['mlm_labels_a']
  selected = labels >= 0
  words = slice(1, PHRASE_START)
  assert not selected[:, :1].any() and not selected[:, PHRASE_START:].any()
  np.testing.assert_array_equal(labels[selected], np.broadcast_to(original, ids.shape)[selected])
  assert abs(selected[:, words].mean() - 0.15) < 0.01
  chosen_ids = ids[selected]
  chosen_orig = np.broadcast_to(original, ids.shape)[selected]
  is_mask = chosen_ids == MASK
  is_kept = chosen_ids == chosen_orig
  assert abs(is_mask.mean() - 0.8) < 0.02
  assert abs(is_kept.mean() - 0.1) < 0.02
  assert abs((~is_mask & ~is_kept).mean() - 0.1) < 0.02
  assert chosen_ids.max() < WORD_VOCAB
  # Unselected words, [CLS], [SEP] and padding are untouched.
  np.testing.assert_array_equal(ids[:, words][~selected[:, words]],
                                np.broadcast_to(original[words], ids[:, words].shape)[
                                    ~selected[:, words]])
  np.testing.assert_array_equal(ids[:, [0, SEP_POS, SEP_POS + 1, LA - 1]],
                                np.broadcast_to(original[[0, SEP_POS, SEP_POS + 1, LA - 1]],
                                                (NUM_EXAMPLES, 4)))


def test_phrases_forced_by_linked_words_and_never_labelled(corrupted):
  original = _example()['input_ids_a']
  ids, labels = corrupted['input_ids_a'], corrupted['mlm_labels_a']
  word_masked = labels[:, 1] >= 0
  assert (ids[word_masked, PHRASE_START] == MASK).all()
  linked_free = ids[~word_masked, PHRASE_START] != original[PHRASE_START]
  assert abs(linked_free.mean() - 0.135) < 0.03  # 15% selected, 90% of those changed.
  others = ids[:, PHRASE_START + 1:SEP_POS]
  changed = others != original[PHRASE_START + 1:SEP_POS]
  assert abs(changed.mean() - 0.135) < 0.01
  assert abs((others[changed] == MASK).mean() - 8 / 9) < 0.03
  randoms = others[changed & (others != MASK)]
  assert randoms.size and randoms.min() >= WORD_VOCAB and randoms.max() < NUM_ROWS


def test_tag_rates_and_labels(corrupted):
  original = _example()['input_ids_b']
  labels = corrupted['mlm_labels_b']
  selected = labels >= 0
  assert not selected[:, 0].any() and not selected[:, N_TAGS + 1:].any()
  assert abs(selected[:, 1:N_TAGS + 1].mean() - 0.15) < 0.012
  np.testing.assert_array_equal(labels[selected],
                                np.broadcast_to(original, labels.shape)[selected])
  assert abs((corrupted['input_ids_b'][selected] == MASK).mean() - 0.8) < 0.03


def test_deterministic_given_seed_and_index(corrupted):
  corruption = masking.Corruption(MASK, WORD_VOCAB, NUM_ROWS)
  again = _run(corruption, seed=7)
  for key in ('input_ids_a', 'mlm_labels_a', 'input_ids_b', 'mlm_labels_b'):
    np.testing.assert_array_equal(again[key], corrupted[key])
  other = _run(corruption, seed=8)
  assert (other['mlm_labels_a'] != corrupted['mlm_labels_a']).any()
  assert (corrupted['mlm_labels_a'][0] != corrupted['mlm_labels_a'][1]).any()


def test_mask_prob_option_and_no_corruption():
  example = {k: tf.constant(v) for k, v in _example().items()}
  out = masking.Corruption(MASK, WORD_VOCAB, NUM_ROWS, mask_prob=1.0)(example, tf.constant([1, 2]))
  assert (out['mlm_labels_a'].numpy()[1:PHRASE_START] >= 0).all()
  assert assembly.PHRASE_WORD_LINKS not in out
  plain = masking.no_corruption(example)
  assert (plain['mlm_labels_a'].numpy() == -1).all() and (plain['mlm_labels_b'].numpy() == -1).all()
  np.testing.assert_array_equal(plain['input_ids_a'], _example()['input_ids_a'])
  assert assembly.PHRASE_WORD_LINKS not in plain
