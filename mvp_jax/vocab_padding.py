"""Rows of a vocabulary-sized array fitted to another row count (`ModelConfig.vocab_multiple`).

The model's word table and decoders have `padded_*` rows; the authors' checkpoints and every
export have the real counts. `fit_rows` is the one conversion between the two: zeros appended
on load, padding rows cut on export (refusing to cut a row that holds anything).
"""

import numpy as np


def fit_rows(array, rows: int, name: str = 'array') -> np.ndarray:
  """`array` [n, ...] -> [rows, ...]: zero rows appended (rows > n) or trailing rows cut.

  Raises:
    ValueError if a cut row is not all zeros (it would be a real word, not padding).
  """
  array = np.asarray(array)
  have = array.shape[0]
  if rows == have:
    return array
  if rows > have:
    padding = np.zeros((rows - have,) + array.shape[1:], array.dtype)
    return np.concatenate([array, padding], axis=0)
  cut = array[rows:]
  if np.any(cut != 0):
    first = rows + int(np.flatnonzero(np.any(cut.reshape(len(cut), -1) != 0, axis=1))[0])
    raise ValueError(f'{name}: cannot cut rows {rows}..{have - 1} to {rows} rows, row {first} '
                     f'is not zero (a real row, not vocabulary padding).')
  return array[:rows]
