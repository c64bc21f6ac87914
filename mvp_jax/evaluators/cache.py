"""Evaluation batches held in host memory with each image's visual columns stored once.

The trainer reads every evaluation split once and keeps its host batches for all later
evaluations. A (caption, image) row carries its image's visual columns (tags and [R, D] region
features), so a plain list of batches holds one copy of an image per caption: COCO-5k's 25k
captions x 50 regions x 2054 floats is about 10 GB per host. `hold` keeps one copy per distinct
visual row instead; a batch's visual column is a view (`ImageColumn`) that reads rows from that
table and becomes a [B, ...] array only when a step puts it on the device.

Rows are shared by content (a digest of all their visual columns, then an exact comparison), so
rows that differ, e.g. corrupted tags, are kept apart: nothing is assumed about the data.
"""

import hashlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence

import numpy as np
from absl import logging

VISUAL_KEYS = ('input_ids_b', 'token_type_ids_b', 'attention_mask_b', 'img_feats')


class ImageTable:
  """Distinct visual rows: `add(row) -> id`, `rows[key][id]` (one array per distinct row)."""

  def __init__(self, keys: Sequence[str]):
    self.keys = tuple(keys)
    self.rows: Dict[str, List[np.ndarray]] = {k: [] for k in self.keys}
    self._by_digest: Dict[bytes, List[int]] = {}

  def __len__(self) -> int:
    return len(self.rows[self.keys[0]])

  def add(self, row: Mapping[str, np.ndarray]) -> int:
    digest = hashlib.blake2b(digest_size=16)
    for key in self.keys:
      digest.update(np.ascontiguousarray(row[key]).view(np.uint8))
    candidates = self._by_digest.setdefault(digest.digest(), [])
    for i in candidates:
      if all(np.array_equal(self.rows[k][i], row[k]) for k in self.keys):
        return i
    candidates.append(len(self))
    for key in self.keys:
      self.rows[key].append(np.array(row[key]))
    return candidates[-1]


class ImageColumn:
  """One visual column of a held batch: [B, ...] rows read from an ImageTable by id.

  Indexing by an int returns that row; `np.asarray` (as `to_device` does) stacks all rows.
  """

  def __init__(self, table: ImageTable, key: str, ids: np.ndarray):
    self._table, self._key, self._ids = table, key, ids
    first = table.rows[key][int(ids[0])]
    self.shape, self.dtype = (len(ids),) + first.shape, first.dtype

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, index: Any) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self._table.rows[self._key][int(self._ids[index])]
    return np.asarray(self)[index]

  def __array__(self, dtype=None, copy=None):  # pylint: disable=unused-argument
    out = np.stack([self._table.rows[self._key][int(i)] for i in self._ids])
    return out if dtype is None else out.astype(dtype)


class HeldBatch(Mapping):
  """A host batch whose visual columns are ImageColumns over a shared ImageTable."""

  def __init__(self, columns: Mapping[str, np.ndarray], table: ImageTable, ids: np.ndarray):
    self._columns = dict(columns)
    self._visual = {k: ImageColumn(table, k, ids) for k in table.keys}
    self.table = table

  def __getitem__(self, key: str):
    return self._visual[key] if key in self._visual else self._columns[key]

  def __iter__(self) -> Iterator[str]:
    return iter(list(self._columns) + list(self._visual))

  def __len__(self) -> int:
    return len(self._columns) + len(self._visual)


def hold(batches: Iterable[Mapping[str, np.ndarray]], where: str = '') -> List[Mapping[str, Any]]:
  """Materialises an evaluation pass, each distinct visual row stored once.

  Batches without `img_feats` are kept as they are. Raises ValueError (naming `where`) when the
  pass yields no batch.
  """
  held: List[Mapping[str, Any]] = []
  table = None
  captions = 0
  for batch in batches:
    if 'img_feats' not in batch:
      held.append(dict(batch))
      continue
    keys = tuple(k for k in VISUAL_KEYS if k in batch)
    table = table or ImageTable(keys)
    if table.keys != keys:
      raise ValueError(f'{where}: batches hold different visual columns: {table.keys} vs {keys}.')
    rows = len(batch['img_feats'])
    ids = np.asarray([table.add({k: batch[k][r] for k in keys}) for r in range(rows)], np.int64)
    held.append(HeldBatch({k: v for k, v in batch.items() if k not in keys}, table, ids))
    captions += rows
  if not held:
    raise ValueError(f'{where}: the evaluation split yielded no batch.')
  if table is not None:
    logging.info('%s: %d evaluation batches, %d rows holding %d distinct image rows.', where,
                 len(held), captions, len(table))
  return held


def image_rows_held(batches: Sequence[Mapping[str, Any]]) -> int:
  """How many [R, D] image-feature rows `batches` keep in memory (a shared table counts once)."""
  tables, rows = {}, 0
  for batch in batches:
    if isinstance(batch, HeldBatch):
      tables[id(batch.table)] = len(batch.table)
    elif 'img_feats' in batch:
      rows += len(batch['img_feats'])
  return rows + sum(tables.values())
