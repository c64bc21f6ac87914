"""Text tokenizers behind one interface, usable inside tf.data (spec §5.4).

Both tokenizers split text into words first (whitespace, plus punctuation and CJK characters for
WordPiece, as BERT's basic tokenizer does), then split each word into sub-word pieces. Special
tokens written in the text (e.g. "a [MASK] on a horse") are never split: they map to their own id.
The five special roles (pad, unk, cls, sep, mask) are looked up in the vocabulary by token string,
never hard-coded: a BERT vocab.txt gives [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, a
compact vocabulary puts them elsewhere.
"""

import abc
import os
import re
from typing import Optional, Sequence

import sentencepiece
from sentencepiece import sentencepiece_model_pb2
import tensorflow as tf
import tensorflow_text as tf_text

SPECIAL_ROLES = ('pad', 'unk', 'cls', 'sep', 'mask')
BERT_SPECIAL_TOKENS = {'pad': '[PAD]', 'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]',
                       'mask': '[MASK]'}
# SentencePiece models name the roles either BERT-style (as train_vocab writes them) or natively.
_SENTENCEPIECE_ALIASES = {'pad': ('[PAD]', '<pad>'), 'unk': ('[UNK]', '<unk>'),
                          'cls': ('[CLS]', '<s>', '<cls>'), 'sep': ('[SEP]', '</s>', '<sep>'),
                          'mask': ('[MASK]', '<mask>')}

# BERT's basic tokenizer: split on whitespace, keep punctuation and CJK characters as words.
_PUNCTUATION = r'[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]'
_CJK = (r'[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]'
        r'|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]')


class Tokenizer(abc.ABC):
  """Interface of the text tokenizers. Ids are int32.

  Attributes:
    vocab_size: number of ids (the word vocabulary; concept ids start at this value).
    pad_id, unk_id, cls_id, sep_id, mask_id: ids of the five special roles.
    num_special: number of vocabulary entries that are special tokens (e.g. [PAD], [unused7] or
      SentencePiece control/user-defined pieces), counted over the whole vocabulary.
  """

  def __init__(self, special_tokens: dict[str, str], split_punctuation: bool):
    self.special_tokens = dict(special_tokens)
    self._special_ids = {role: self.token_to_id(tok) for role, tok in special_tokens.items()}
    special_pattern = '|'.join(re.escape(t) for t in special_tokens.values())
    keep = [special_pattern] + ([_PUNCTUATION, _CJK] if split_punctuation else [])
    self._keep_pattern = '|'.join(keep)
    self._delim_pattern = '|'.join([special_pattern, r'\s+'] + keep[1:])
    self._special_pattern = special_pattern
    self._special_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(special_tokens.values())),
            tf.constant([self._special_ids[r] for r in special_tokens], tf.int32)), -1)

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids."""

  @property
  @abc.abstractmethod
  def num_special(self) -> int:
    """Number of special entries in the vocabulary."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str:
    """The vocabulary string of `token_id`."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> Optional[int]:
    """The id of an exact vocabulary string, or None."""

  @abc.abstractmethod
  def _tokenize_plain_words(self, words: tf.Tensor) -> tf.RaggedTensor:
    """Pieces of non-special words: string [K] -> int32 ragged [K, (pieces)]."""

  @property
  def pad_id(self) -> int:
    return self._special_ids['pad']

  @property
  def unk_id(self) -> int:
    return self._special_ids['unk']

  @property
  def cls_id(self) -> int:
    return self._special_ids['cls']

  @property
  def sep_id(self) -> int:
    return self._special_ids['sep']

  @property
  def mask_id(self) -> int:
    return self._special_ids['mask']

  def split_words(self, text: tf.Tensor) -> tf.RaggedTensor:
    """Splits text into words: string [B] -> ragged [B, (words)]."""
    text = tf.strings.regex_replace(text, r'\p{Cc}|\p{Cf}', ' ')
    return tf_text.regex_split(text, self._delim_pattern, self._keep_pattern)

  @tf.autograph.experimental.do_not_convert
  def tokenize_words(self, text) -> tf.RaggedTensor:
    """Pieces grouped by word.

    Args:
      text: string [] or [B] (graph or eager).

    Returns:
      int32 ragged [(words), (pieces)] for a scalar, [B, (words), (pieces)] for a batch.
    """
    text = tf.convert_to_tensor(text, tf.string)
    if text.shape.rank == 0:
      return self.tokenize_words(text[None])[0]
    words = self.split_words(text)  # [B, (words)]
    return words.with_flat_values(self._tokenize_flat_words(words.flat_values))

  @tf.autograph.experimental.do_not_convert
  def tokenize(self, text) -> tf.Tensor | tf.RaggedTensor:
    """Token ids: string [] -> int32 [n]; string [B] -> int32 ragged [B, (n)]."""
    return self.tokenize_words(text).merge_dims(-2, -1)

  def _tokenize_flat_words(self, words: tf.Tensor) -> tf.RaggedTensor:
    """string [K] -> int32 ragged [K, (pieces)], special tokens as single pieces."""
    special_ids = self._special_table.lookup(words)
    is_special = special_ids >= 0
    pieces = self._tokenize_plain_words(words)
    lengths = tf.where(is_special, tf.ones_like(pieces.row_lengths()), pieces.row_lengths())
    starts = tf.cumsum(lengths, exclusive=True)
    piece_word = pieces.value_rowids()
    piece_offset = tf.range(tf.shape(pieces.values, out_type=tf.int64)[0]) - tf.gather(
        pieces.row_starts(), piece_word)
    keep = tf.logical_not(tf.gather(is_special, piece_word))
    piece_pos = tf.boolean_mask(tf.gather(starts, piece_word) + piece_offset, keep)
    special_pos = tf.boolean_mask(starts, is_special)
    values = tf.scatter_nd(
        tf.concat([piece_pos, special_pos], 0)[:, None],
        tf.concat([tf.boolean_mask(pieces.values, keep), tf.boolean_mask(special_ids, is_special)],
                  0),
        tf.reduce_sum(lengths)[None])
    return tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)

  def single_token_ids(self, words: Sequence[str]) -> list[Optional[int]]:
    """For each word, its id if it tokenizes to exactly one known (non-[UNK]) token, else None."""
    if not words:
      return []
    pieces = self.tokenize(tf.constant(list(words))).to_list()
    return [p[0] if len(p) == 1 and p[0] != self.unk_id else None for p in pieces]


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece on a vocab.txt (one token per line; pieces continuing a word start with ##)."""

  def __init__(self, vocab_path: str, lower_case: bool = True):
    with open(vocab_path, encoding='utf-8') as f:
      self._vocab = [line.rstrip('\n') for line in f]
    if not self._vocab:
      raise ValueError(f'{vocab_path}: the vocabulary is empty.')
    self._ids = {tok: i for i, tok in enumerate(self._vocab)}
    missing = [t for t in BERT_SPECIAL_TOKENS.values() if t not in self._ids]
    if missing:
      raise ValueError(f'{vocab_path}: missing special tokens {missing}; a WordPiece vocabulary '
                       f'needs {list(BERT_SPECIAL_TOKENS.values())}.')
    self.path = vocab_path
    self.lower_case = lower_case
    self._wordpiece = tf_text.WordpieceTokenizer(
        tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self._vocab), tf.range(len(self._vocab), dtype=tf.int64)), -1),
        suffix_indicator='##', max_bytes_per_word=100, token_out_type=tf.int64,
        unknown_token='[UNK]')
    super().__init__(BERT_SPECIAL_TOKENS, split_punctuation=True)

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  @property
  def num_special(self) -> int:
    return sum(1 for t in self._vocab if re.fullmatch(r'\[[^\[\]\s]+\]', t))

  def id_to_token(self, token_id: int) -> str:
    return self._vocab[token_id]

  def token_to_id(self, token: str) -> Optional[int]:
    return self._ids.get(token)

  def _tokenize_plain_words(self, words: tf.Tensor) -> tf.RaggedTensor:
    if self.lower_case:
      words = tf_text.normalize_utf8(tf_text.case_fold_utf8(words), 'NFD')
      words = tf.strings.regex_replace(words, r'\p{Mn}', '')
    pieces = self._wordpiece.tokenize(words)
    return tf.cast(pieces, tf.int32)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model; its special pieces take the five roles ([PAD] or <pad>, ...)."""

  def __init__(self, model_path: str):
    with open(model_path, 'rb') as f:
      self._model = f.read()
    self._processor = sentencepiece.SentencePieceProcessor(model_proto=self._model)
    self.path = model_path
    special = {}
    for role, names in _SENTENCEPIECE_ALIASES.items():
      found = [n for n in names if self.token_to_id(n) is not None]
      if not found:
        raise ValueError(f'{model_path}: no piece for the {role} role; expected one of {names}.')
      special[role] = found[0]
    self._sp = tf_text.SentencepieceTokenizer(model=self._model, out_type=tf.int32)
    super().__init__(special, split_punctuation=False)

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def num_special(self) -> int:
    proto = sentencepiece_model_pb2.ModelProto.FromString(self._model)
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
    special = (kinds.UNKNOWN, kinds.CONTROL, kinds.USER_DEFINED)
    return sum(1 for piece in proto.pieces if piece.type in special)

  def id_to_token(self, token_id: int) -> str:
    return self._processor.id_to_piece(token_id)

  def token_to_id(self, token: str) -> Optional[int]:
    i = self._processor.piece_to_id(token)
    if i == self._processor.unk_id() and token != self._processor.id_to_piece(i):
      return None
    return i

  def _tokenize_plain_words(self, words: tf.Tensor) -> tf.RaggedTensor:
    return self._sp.tokenize(words)


def load_tokenizer(path: str) -> Tokenizer:
  """WordPiece for a `*.txt` vocabulary, SentencePiece for a `*.model` file."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: tokenizer file not found.')
  if path.endswith('.txt'):
    return WordPieceTokenizer(path)
  if path.endswith('.model'):
    return SentencePieceTokenizer(path)
  raise ValueError(f'{path}: unknown tokenizer file; expected vocab.txt (WordPiece) or a '
                   'SentencePiece .model file.')
