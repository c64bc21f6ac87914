"""The SentencePiece tokenizer of a SigLIP checkpoint's text tower.

SigLIP (c4_en / mc4 SentencePiece, `transformers.SiglipTokenizer`): the text is canonicalised
as big_vision's prompt engineering does (lower case, punctuation removed, whitespace squeezed),
encoded, EOS appended and padded with EOS to the tower's length (big_vision's "sticky" EOS; the
tower pools the last position). SigLIP 2 (Gemma SentencePiece): the text is encoded as it is,
EOS appended, padded with the model's pad id. Texts longer than the tower are cut, keeping EOS.
"""

import os
import re
import string
from typing import Optional, Sequence

import numpy as np

TOKENIZER_FILES = ('spiece.model', 'tokenizer.model', 'sentencepiece.model')
_PUNCTUATION = str.maketrans('', '', string.punctuation)


def find_tokenizer(checkpoint: str) -> str:
  """The SentencePiece file saved with a HF checkpoint folder (or beside a .npz)."""
  folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint) or '.'
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise FileNotFoundError(f'{folder}: no SentencePiece tokenizer ({", ".join(TOKENIZER_FILES)}); '
                          'pass its path explicitly.')


class SiglipTokenizer:
  """Text -> int32 ids [B, max_len] for the text tower.

  Args:
    model_file: the SentencePiece .model.
    max_len: the text tower's length (TextConfig.max_len).
    variant: 'siglip' (canonicalise, pad with EOS) or 'siglip2' (raw text, pad with pad id).
  """

  def __init__(self, model_file: str, max_len: int, variant: str = 'siglip'):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    if variant not in ('siglip', 'siglip2'):
      raise ValueError(f"variant must be 'siglip' or 'siglip2', got {variant!r}.")
    self.processor = sentencepiece.SentencePieceProcessor(model_file=os.fspath(model_file))
    self.max_len = max_len
    self.variant = variant
    self.eos_id = self.processor.eos_id()
    if self.eos_id < 0:
      raise ValueError(f'{model_file}: the SentencePiece model has no EOS id.')
    pad = self.processor.pad_id()
    self.pad_id = self.eos_id if variant == 'siglip' or pad < 0 else pad

  def canonicalize(self, text: str) -> str:
    if self.variant == 'siglip2':
      return text
    text = text.lower().translate(_PUNCTUATION)
    return re.sub(r'\s+', ' ', text).strip()

  def encode(self, text: str) -> list[int]:
    """Ids of one text with EOS, unpadded (at most max_len)."""
    ids = self.processor.encode(self.canonicalize(text))
    return list(ids[:self.max_len - 1]) + [self.eos_id]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    out = np.full((len(texts), self.max_len), self.pad_id, np.int32)
    for i, text in enumerate(texts):
      ids = self.encode(text)
      out[i, :len(ids)] = ids
    return out

  @classmethod
  def for_checkpoint(cls, checkpoint: str, max_len: int, variant: str,
                     model_file: Optional[str] = None) -> 'SiglipTokenizer':
    return cls(model_file or find_tokenizer(checkpoint), max_len, variant)
