"""Phrase-concept vocabulary (spec §5.3).

Concepts are scene-graph tuples ((object), (object, attribute), (subject, relation, object)). Each
has a row of the shared word-embedding table: a single-word concept that is a whole vocabulary token
reuses that token's id (["man"] -> 2158 with BERT's vocabulary), every other concept gets a new row
from `word_vocab_size` upward. Saved as the authors' `id2phrase` JSON:
`{"30522": ["boat", "two"], "2158": ["man"], ...}` (keys are absolute embedding rows).
"""

import collections
import json
from typing import Iterable, Mapping, Optional, Sequence

import tensorflow as tf

from input_pipeline import tokenizers

# Joins the words of a tuple into one lookup key (SPICE words may contain spaces, e.g. "fill with").
KEY_SEPARATOR = '\x1f'


class ConceptVocab:
  """Bidirectional map between phrase tuples and embedding rows.

  Attributes:
    id2phrase: embedding row -> tuple of str, in file (or creation) order.
    phrase2id: tuple of str -> embedding row.
    word_vocab_size: number of word ids; new concept rows start here.
  """

  def __init__(self, id2phrase: Mapping[int, Sequence[str]], word_vocab_size: int,
               source: str = '<memory>'):
    self.word_vocab_size = int(word_vocab_size)
    self.id2phrase = {}
    self.phrase2id = {}
    for row, phrase in id2phrase.items():
      row, phrase = int(row), tuple(phrase)
      if row < 0 or not phrase or not all(isinstance(w, str) and w for w in phrase):
        raise ValueError(f'{source}: bad entry {row}: {list(phrase)}; rows are >= 0 and phrases '
                         'non-empty lists of non-empty strings.')
      if phrase in self.phrase2id:
        raise ValueError(f'{source}: phrase {list(phrase)} has two rows, '
                         f'{self.phrase2id[phrase]} and {row}.')
      self.id2phrase[row] = phrase
      self.phrase2id[phrase] = row

  @property
  def num_rows(self) -> int:
    """Embedding rows the table needs: max id + 1, at least the word vocabulary."""
    return max([self.word_vocab_size] + [row + 1 for row in self.id2phrase])

  @property
  def num_new(self) -> int:
    """Concepts with their own row (not sharing a word's row)."""
    return sum(1 for row in self.id2phrase if row >= self.word_vocab_size)

  def __len__(self) -> int:
    return len(self.id2phrase)

  def ids(self, phrases: Iterable[Sequence[str]]) -> list[int]:
    """Rows of the known phrases, in order; unknown phrases are dropped (as the authors do)."""
    rows = (self.phrase2id.get(tuple(p)) for p in phrases)
    return [row for row in rows if row is not None]

  def lookup_table(self) -> tf.lookup.StaticHashTable:
    """In-graph map from `join_phrases` keys to int32 rows; -1 for unknown phrases."""
    keys = [KEY_SEPARATOR.join(p) for p in self.phrase2id] or ['']
    rows = list(self.phrase2id.values()) or [-1]
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(rows, tf.int32)), -1)

  def save(self, path: str) -> None:
    """Writes the authors' id2phrase JSON."""
    with open(path, 'w', encoding='utf-8') as f:
      json.dump({str(row): list(p) for row, p in self.id2phrase.items()}, f)

  @classmethod
  def load(cls, path: str, word_vocab_size: int) -> 'ConceptVocab':
    """Reads an id2phrase JSON (keys are absolute rows)."""
    with open(path, encoding='utf-8') as f:
      try:
        raw = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e}).') from e
    if not isinstance(raw, dict):
      raise ValueError(f'{path}: expected a JSON object {{"row": [words...]}}.')
    bad = [k for k, v in raw.items() if not k.lstrip('-').isdigit() or not isinstance(v, list)]
    if bad:
      raise ValueError(f'{path}: entries {bad[:5]} are not "integer row": [words].')
    return cls({int(k): v for k, v in raw.items()}, word_vocab_size, source=path)

  @classmethod
  def build(cls, sentences: Iterable[Iterable[Sequence[str]]], tokenizer: tokenizers.Tokenizer,
            min_count: int) -> 'ConceptVocab':
    """Keeps the tuples seen in at least `min_count` sentences (each counted once per sentence).

    Single-word tuples that are one whole (non-[UNK]) token reuse its id; the others get rows
    `tokenizer.vocab_size`, +1, ... in order of decreasing count, ties broken by the tuple.
    """
    counts = collections.Counter()
    for sentence in sentences:
      counts.update({tuple(p) for p in sentence})
    kept = sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))
    singles = [p for p in kept if len(p) == 1]
    single_ids = dict(zip(singles, tokenizer.single_token_ids([p[0] for p in singles])))
    id2phrase = {}
    next_row = tokenizer.vocab_size
    for phrase in kept:
      row: Optional[int] = single_ids.get(phrase)
      if row is None or row in id2phrase:  # A second spelling of the same token gets its own row.
        row, next_row = next_row, next_row + 1
      id2phrase[row] = phrase
    return cls(dict(sorted(id2phrase.items())), tokenizer.vocab_size)


def join_phrases(phrases: tf.RaggedTensor) -> tf.Tensor:
  """Lookup keys of phrase tuples: string ragged [P, (L)] -> string [P]."""
  return tf.strings.reduce_join(phrases, axis=-1, separator=KEY_SEPARATOR)
