"""Trains a WordPiece or SentencePiece vocabulary on a caption corpus (one caption per line).

  python -m input_pipeline.train_vocab --corpus=captions.txt --kind=wordpiece --vocab_size=8000 \
      --out=/data/mydataset/vocab.txt
  python -m input_pipeline.train_vocab --corpus=captions.txt --kind=sentencepiece \
      --vocab_size=8000 --out=/data/mydataset/spm.model

Both vocabularies carry the five special tokens [PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4 and are
uncased. `write_vocab` writes a compact WordPiece vocab.txt from a known word list instead.
"""

import io
import os
import re
import sys
from typing import Iterable, Optional, Sequence

from absl import flags
import sentencepiece
import tensorflow as tf
from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

from input_pipeline import cli
from input_pipeline import tokenizers

SPECIAL_TOKENS = tuple(tokenizers.BERT_SPECIAL_TOKENS[r] for r in tokenizers.SPECIAL_ROLES)


def write_vocab(words: Iterable[str], path: str) -> None:
  """Writes a WordPiece vocab.txt: the five special tokens, then `words` (duplicates dropped).

  Every word must be what the uncased tokenizer produces for it (lowercase, no whitespace, and
  punctuation only as a one-character word), so each word maps to exactly one id.
  """
  vocab = list(SPECIAL_TOKENS)
  seen = set(vocab)
  for word in words:
    if (not word or word != word.lower() or re.search(r'\s', word)
        or (len(word) > 1 and re.search(r'[^\w#]', word))):
      raise ValueError(f'{path}: {word!r} is not a single lowercase word; the tokenizer would '
                       'split or change it.')
    if word not in seen:
      seen.add(word)
      vocab.append(word)
  _write_lines(vocab, path)


def train_wordpiece(captions: Sequence[str], vocab_size: int, path: str) -> None:
  """Learns an uncased WordPiece vocabulary of about `vocab_size` entries."""
  dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(captions), tf.string))
  vocab = bert_vocab_from_dataset.bert_vocab_from_dataset(
      dataset.batch(1024), vocab_size=vocab_size, reserved_tokens=list(SPECIAL_TOKENS),
      bert_tokenizer_params={'lower_case': True})
  _write_lines(vocab, path)


def train_sentencepiece(captions: Sequence[str], vocab_size: int, path: str) -> None:
  """Learns a case-folding unigram SentencePiece model with the special tokens at ids 0-4."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
      model_type='unigram', normalization_rule_name='nmt_nfkc_cf', pad_id=0, unk_id=1, bos_id=-1,
      eos_id=-1, pad_piece='[PAD]', unk_piece='[UNK]',
      user_defined_symbols=['[CLS]', '[SEP]', '[MASK]'], hard_vocab_limit=False, minloglevel=2)
  _makedirs_for(path)
  with open(path, 'wb') as f:
    f.write(model.getvalue())


def read_corpus(path: str) -> list[str]:
  """Non-empty lines of a caption file."""
  with open(path, encoding='utf-8') as f:
    captions = [line.strip() for line in f if line.strip()]
  if not captions:
    raise ValueError(f'{path}: the corpus has no captions.')
  return captions


def _write_lines(lines: Sequence[str], path: str) -> None:
  _makedirs_for(path)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(line + '\n' for line in lines))


def _makedirs_for(path: str) -> None:
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('corpus', None, 'Caption file, one caption per line.', flag_values=v)
  flags.DEFINE_enum('kind', 'wordpiece', ['wordpiece', 'sentencepiece'], 'Tokenizer to train: BERT WordPiece or SentencePiece.',
                    flag_values=v)
  flags.DEFINE_integer('vocab_size', 8000, 'Target vocabulary size.', flag_values=v)
  flags.DEFINE_string('out', None, 'Output vocab.txt (wordpiece) or .model file.',
                      flag_values=v)


def _run(a: flags.FlagValues) -> int:
  captions = read_corpus(a.corpus)
  if a.kind == 'wordpiece':
    train_wordpiece(captions, a.vocab_size, a.out)
  else:
    train_sentencepiece(captions, a.vocab_size, a.out)
  tokenizer = tokenizers.load_tokenizer(a.out)
  print(f'Wrote {a.out}: {tokenizer.vocab_size} tokens.')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m input_pipeline.train_vocab', argv, _define, _run,
                 required=('corpus', 'out'), what='training the vocabulary')


if __name__ == '__main__':
  sys.exit(main())
