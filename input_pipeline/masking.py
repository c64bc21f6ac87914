"""Input corruption for MLM and MCR, in-graph and stateless (spec §2.2).

Per assembled example (after `assembly.ExampleAssembler`):
- words: each word piece is selected with `mask_prob`; a selected piece becomes [MASK] (80%), a
  token drawn uniformly from the whole word vocabulary (10%) or stays (10%). `mlm_labels_a` holds
  the original id at selected pieces, -1 elsewhere.
- tags: the same rule on the tag pieces, labels in `mlm_labels_b`.
- phrases: every phrase linked to a selected word (see `assembly`) is forced to [MASK]; each other
  phrase is selected with `mask_prob` and becomes [MASK] (80%), a concept id drawn uniformly from
  [word_vocab_size, num_rows) (10%; kept when there are no such rows) or stays (10%). Phrases are
  never labelled: phrase masking only corrupts the input.
[CLS], [SEP] and padding are never selected. The randomness is a pure function of `seed`, so an
example is corrupted identically after a resume.
"""

import dataclasses

import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import features


@dataclasses.dataclass(frozen=True)
class Corruption:
  """What corruption draws from.

  Attributes:
    mask_id: id of [MASK].
    word_vocab_size: random word replacements are drawn from [0, word_vocab_size).
    num_rows: random phrase replacements are drawn from [word_vocab_size, num_rows).
    mask_prob: selection probability of every word, tag and (non-forced) phrase.
    mask_fraction / random_fraction: shares of the selected that become [MASK] / random; the rest
      are kept.
  """
  mask_id: int
  word_vocab_size: int
  num_rows: int
  mask_prob: float = 0.15
  mask_fraction: float = 0.8
  random_fraction: float = 0.1

  @tf.autograph.experimental.do_not_convert
  def __call__(self, example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Corrupts one example.

    Args:
      example: an assembled example (with `phrase_word_links`).
      seed: int32/int64 [2], stateless RNG seed of this example.

    Returns:
      The example with corrupted `input_ids_a`/`input_ids_b`, `mlm_labels_a` [La] and
      `mlm_labels_b` [T], without the internal `phrase_word_links`.
    """
    example = dict(example)
    links = example.pop(assembly.PHRASE_WORD_LINKS)
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    ids_a, index = example['input_ids_a'], example['phrase_index']
    positions = tf.range(tf.size(ids_a))
    is_word = (positions >= 1) & (positions < index[0])
    is_phrase = (positions >= index[0]) & (positions < index[1])

    original_a = ids_a
    word_selected = _select(is_word, self.mask_prob, seeds[0])
    ids_a = self._replace(ids_a, word_selected, seeds[1], 0, self.word_vocab_size)
    forced = tf.reduce_any(links & word_selected[None, :], axis=1) & is_phrase
    phrase_selected = _select(is_phrase & ~forced, self.mask_prob, seeds[2])
    ids_a = self._replace(ids_a, phrase_selected, seeds[3], self.word_vocab_size, self.num_rows)
    example['input_ids_a'] = tf.where(forced, self.mask_id, ids_a)
    example['mlm_labels_a'] = tf.where(word_selected, original_a, features.IGNORE_LABEL)

    ids_b = example['input_ids_b']
    num_tags = tf.reduce_sum(example['attention_mask_b'][:tf.size(ids_b)]) - 2
    positions_b = tf.range(tf.size(ids_b))
    tag_selected = _select((positions_b >= 1) & (positions_b <= num_tags), self.mask_prob,
                           seeds[4])
    example['input_ids_b'] = self._replace(ids_b, tag_selected, seeds[5], 0,
                                           self.word_vocab_size)
    example['mlm_labels_b'] = tf.where(tag_selected, ids_b, features.IGNORE_LABEL)
    return example

  def _replace(self, ids, selected, seed, low, high):
    """Applies the 80/10/10 rule at `selected` positions; random ids from [low, high)."""
    seed_choice, seed_random = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    choice = tf.random.stateless_uniform(tf.shape(ids), seed_choice)
    if high > low:
      random_ids = tf.random.stateless_uniform(tf.shape(ids), seed_random, minval=low,
                                               maxval=high, dtype=tf.int32)
    else:
      random_ids = ids
    out = tf.where(choice < self.mask_fraction, self.mask_id, ids)
    out = tf.where((choice >= self.mask_fraction)
                   & (choice < self.mask_fraction + self.random_fraction), random_ids, out)
    return tf.where(selected, out, ids)


def _select(eligible: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
  return eligible & (tf.random.stateless_uniform(tf.shape(eligible), seed) < prob)


def no_corruption(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Leaves the inputs unchanged: labels all -1, internal `phrase_word_links` removed."""
  example = dict(example)
  example.pop(assembly.PHRASE_WORD_LINKS)
  example['mlm_labels_a'] = tf.fill(tf.shape(example['input_ids_a']), features.IGNORE_LABEL)
  example['mlm_labels_b'] = tf.fill(tf.shape(example['input_ids_b']), features.IGNORE_LABEL)
  return example
