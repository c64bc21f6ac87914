"""A batch iterator whose position can be saved and restored exactly.

The dataset it wraps must be a pure function of its start position (epoch, batch within the
epoch): `make_dataset(epoch, batch)` yields the batches an uninterrupted run would yield from that
point on. The state is then just that position, plus a fingerprint of the settings the order
depends on, so a checkpoint cannot be resumed with an incompatible pipeline by mistake.
"""

from typing import Any, Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf


class ResumableIterator:
  """Iterates numpy batches; `get_state`/`set_state` save and restore the position.

  Attributes:
    batches_per_epoch: batches this host yields per epoch.
  """

  def __init__(self, make_dataset: Callable[[int, int], tf.data.Dataset], *,
               batches_per_epoch: int, fingerprint: Mapping[str, Any]):
    self._make_dataset = make_dataset
    self.batches_per_epoch = batches_per_epoch
    self._fingerprint = dict(fingerprint)
    self._epoch = 0
    self._batch = 0
    self._iterator: Iterator[dict[str, np.ndarray]] | None = None

  def __iter__(self) -> 'ResumableIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      dataset = self._make_dataset(self._epoch, self._batch)
      self._iterator = dataset.as_numpy_iterator()
    batch = next(self._iterator)
    self._batch += 1
    if self._batch == self.batches_per_epoch:
      self._epoch, self._batch = self._epoch + 1, 0
    return batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: {'epoch', 'batch_in_epoch', **fingerprint}."""
    return {'epoch': self._epoch, 'batch_in_epoch': self._batch, **self._fingerprint}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a state returned by `get_state` (of an identically configured iterator)."""
    mismatched = {k: (state.get(k), v) for k, v in self._fingerprint.items()
                  if state.get(k) != v}
    if mismatched:
      raise ValueError('Iterator state was saved with other settings (key: (saved, now)): '
                       f'{mismatched}.')
    epoch, batch = int(state['epoch']), int(state['batch_in_epoch'])
    if epoch < 0 or not 0 <= batch < max(self.batches_per_epoch, 1):
      raise ValueError(f'Iterator state position epoch={epoch}, batch_in_epoch={batch} is out of '
                       f'range ({self.batches_per_epoch} batches per epoch).')
    self._epoch, self._batch = epoch, batch
    self._iterator = None
