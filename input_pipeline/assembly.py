"""Lays out one (image, caption) example as model inputs, in-graph (spec §1.2).

Text stream A (length La = Ls + P):
  [CLS] w_1..w_n p_1..p_m [SEP] [PAD]...   n <= Ls - 2 word pieces, m <= La - 2 - n phrases
so P is an extra length budget, not a cap: a short caption can carry more than P phrases.
Visual stream B (length T + R):
  [CLS] t_1..t_k [SEP] [PAD]... (T) | region rows (first R regions, zero rows up to R)

Tags: the record's region tags deduplicated in first-occurrence order (the authors deduplicate with
a Python set, whose order depends on the hash seed; first occurrence is the reproducible choice), or
with `tags_as_list` all tags in region order (COCO retrieval). All region tags are used, including
those of regions cut by the truncation to R, as the authors do.

Phrase-word links (used by corruption to force the phrases of a masked word to [MASK]): phrase p is
linked to every word piece of each caption word that is also a word of p's tuple, two words being
equal when they tokenize to the same pieces. The link is computed here, on whole words, and kept in
the internal key `phrase_word_links` until corruption removes it.
"""

import dataclasses

import tensorflow as tf

from input_pipeline import concepts
from input_pipeline import features
from input_pipeline import tokenizers

PHRASE_WORD_LINKS = 'phrase_word_links'  # bool [La, La]: [phrase position, word position].


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Sequence lengths (spec §1.2); La = max_seq_length + max_phrases."""
  max_seq_length: int = 35
  max_phrases: int = 5
  max_tag_length: int = 20
  max_img_seq_length: int = 50

  @property
  def text_length(self) -> int:
    return self.max_seq_length + self.max_phrases


@dataclasses.dataclass(frozen=True)
class LayoutOptions:
  """Variants of the layout; the defaults are the pre-training layout.

  Attributes:
    use_phrases: False leaves the phrase list empty (referring expressions, spec §1.2).
    tags_as_list: True keeps duplicate tags in region order instead of the deduplicated set.
  """
  use_phrases: bool = True
  tags_as_list: bool = False


class ExampleAssembler:
  """Callable turning one caption and its image into the unbatched model inputs (in-graph)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, concept_vocab: concepts.ConceptVocab,
               lengths: Lengths, options: LayoutOptions = LayoutOptions()):
    if lengths.max_seq_length < 2 or lengths.max_tag_length < 2:
      raise ValueError(f'{lengths}: max_seq_length and max_tag_length must leave room for '
                       '[CLS] and [SEP].')
    self.tokenizer = tokenizer
    self.lengths = lengths
    self.options = options
    self._concept_table = concept_vocab.lookup_table()

  @tf.autograph.experimental.do_not_convert
  def __call__(self, caption: tf.Tensor, phrases: tf.RaggedTensor, phrase_regions: tf.Tensor,
               tags: tf.Tensor, region_features: tf.Tensor) -> dict[str, tf.Tensor]:
    """Assembles one example.

    Args:
      caption: string [].
      phrases: string ragged [P, (L)], the caption's phrase tuples.
      phrase_regions: int32 [P], grounded region of each phrase or -1.
      tags: string [N], tag of each region.
      region_features: float32 [N, D].

    Returns:
      The per-example model inputs of `features.MODEL_INPUT_KEYS`, `phrase_region_links` [La] and
      the internal `phrase_word_links` bool [La, La].
    """
    text = self._text(caption, phrases, tf.cast(phrase_regions, tf.int32),
                      tf.shape(region_features)[0])
    return {**text, **self._visual(tags, region_features)}

  def _text(self, caption, phrases, phrase_regions, num_regions) -> dict[str, tf.Tensor]:
    tok, la = self.tokenizer, self.lengths.text_length
    word_pieces = tok.tokenize_words(caption)  # [W, (pieces)]
    n = tf.minimum(tf.size(word_pieces.flat_values), self.lengths.max_seq_length - 2)
    word_ids = word_pieces.flat_values[:n]
    piece_word = tf.cast(word_pieces.value_rowids()[:n], tf.int32)

    phrase_ids = self._concept_table.lookup(concepts.join_phrases(phrases))
    known = phrase_ids >= 0
    phrases = tf.ragged.boolean_mask(phrases, known)
    phrase_ids = tf.boolean_mask(phrase_ids, known)
    regions = tf.boolean_mask(phrase_regions, known)
    m = tf.minimum(tf.size(phrase_ids), la - 2 - n) if self.options.use_phrases else 0
    phrase_ids, regions = phrase_ids[:m], regions[:m]
    links = self._phrase_word_links(word_pieces, phrases)  # [P, W]
    links = tf.gather(links[:m], piece_word, axis=1)  # [m, n]
    links = tf.pad(links, [[1 + n, la - 1 - n - m], [1, la - 1 - n]])

    used = n + m + 2
    ids = tf.concat([[tok.cls_id], word_ids, phrase_ids, [tok.sep_id]], 0)
    kept_regions = tf.minimum(num_regions, self.lengths.max_img_seq_length)
    regions = tf.where((regions >= 0) & (regions < kept_regions), regions, -1)
    return {
        'input_ids_a': _pad_to(ids, la, tok.pad_id),
        'attention_mask_a': _pad_to(tf.ones([used], tf.int32), la, 0),
        'token_type_ids_a': tf.zeros([la], tf.int32),
        'phrase_index': tf.stack([1 + n, 1 + n + m]),
        'phrase_region_links': _pad_to(
            tf.concat([tf.fill([1 + n], -1), regions], 0), la, features.IGNORE_LABEL),
        PHRASE_WORD_LINKS: tf.ensure_shape(links, [la, la]),
    }

  def _phrase_word_links(self, word_pieces: tf.RaggedTensor,
                         phrases: tf.RaggedTensor) -> tf.Tensor:
    """bool [P, W]: phrase p has a word tokenizing like caption word w (never an [UNK] word)."""
    word_keys = _word_keys(word_pieces)  # [W]
    phrase_word_pieces = self.tokenizer.tokenize_words(phrases.flat_values)  # [E, (w), (pieces)]
    phrase_keys = _word_keys(phrase_word_pieces.values)  # [Kp]
    element_phrase = phrases.value_rowids()
    key_phrase = tf.gather(element_phrase, phrase_word_pieces.value_rowids())  # [Kp]
    match = tf.equal(word_keys[:, None], phrase_keys[None, :])
    match &= tf.not_equal(word_keys, tf.strings.as_string(self.tokenizer.unk_id))[:, None]
    links = tf.math.unsorted_segment_max(
        tf.cast(tf.transpose(match), tf.int32), key_phrase, phrases.nrows())
    return links > 0

  def _visual(self, tags, region_features) -> dict[str, tf.Tensor]:
    tok, t, r = self.tokenizer, self.lengths.max_tag_length, self.lengths.max_img_seq_length
    if not self.options.tags_as_list:
      tags = tf.unique(tags).y  # First-occurrence order.
    tag_ids = tok.tokenize(tags).flat_values[:t - 2]
    k = tf.size(tag_ids)
    kept = tf.minimum(tf.shape(region_features)[0], r)
    regions = tf.pad(region_features[:kept], [[0, r - kept], [0, 0]])
    mask_b = tf.concat([tf.ones([k + 2], tf.int32), tf.zeros([t - k - 2], tf.int32),
                        tf.ones([kept], tf.int32), tf.zeros([r - kept], tf.int32)], 0)
    la = self.lengths.text_length
    return {
        'input_ids_b': _pad_to(tf.concat([[tok.cls_id], tag_ids, [tok.sep_id]], 0), t,
                               tok.pad_id),
        'token_type_ids_b': tf.ones([t], tf.int32),
        'attention_mask_b': tf.ensure_shape(mask_b, [t + r]),
        'img_feats': tf.ensure_shape(regions, [r, region_features.shape[-1]]),
        'img_index': tf.stack([la, la + kept]),
    }


def _word_keys(word_pieces: tf.RaggedTensor) -> tf.Tensor:
  """One string per word naming its pieces: int ragged [W, (pieces)] -> string [W]."""
  return tf.strings.reduce_join(tf.strings.as_string(word_pieces), axis=-1, separator=' ')


def _pad_to(values: tf.Tensor, length: int, pad_value: int) -> tf.Tensor:
  """Pads a 1-D tensor at the end to `length` (its length must not exceed it)."""
  values = tf.pad(values, [[0, length - tf.size(values)]], constant_values=pad_value)
  return tf.ensure_shape(values, [length])
