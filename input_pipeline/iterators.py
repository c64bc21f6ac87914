"""A batch iterator whose position can be saved and restored exactly.

The dataset it wraps must be a pure function of its start position (epoch, batch within the
epoch): `make_dataset(epoch, batch)` yields the batches an uninterrupted run would yield from that
point on. The state is then just that position, plus a fingerprint of the settings the order
depends on, so a checkpoint cannot be resumed with an incompatible pipeline by mistake.
"""

import math
from typing import Any, Callable, Iterator, Mapping, Optional

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
    """Continues from a state returned by `get_state` (of an identically configured iterator).

    The position is global (every host reads the same batches per epoch), so any host's saved
    state resumes every host: orbax writes the data state of the primary host only.
    """
    mismatched = {k: (state.get(k), v) for k, v in self._fingerprint.items()
                  if state.get(k) != v and k != 'process_index'}
    if mismatched:
      raise ValueError('Iterator state was saved with other settings (key: (saved, now)): '
                       f'{mismatched}.')
    epoch, batch = int(state['epoch']), int(state['batch_in_epoch'])
    if epoch < 0 or not 0 <= batch < max(self.batches_per_epoch, 1):
      raise ValueError(f'Iterator state position epoch={epoch}, batch_in_epoch={batch} is out of '
                       f'range ({self.batches_per_epoch} batches per epoch).')
    self._epoch, self._batch = epoch, batch
    self._iterator = None


def resolve_hosts(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  """(this host, number of hosts), defaulting to jax's; validated."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only needed for the multi-host default)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  return process_index, process_count


def batches_per_epoch(num_examples: int, process_count: int, batch_size: int,
                      pad_final_batch: bool, where: str) -> int:
  """Batches every host yields per epoch: all examples, padded (eval) or whole batches (train)."""
  if pad_final_batch:
    batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
  else:
    batches = num_examples // process_count // batch_size
  if batches == 0:
    raise ValueError(f'{where}: {num_examples} examples over {process_count} hosts '
                     f'do not fill one batch of {batch_size}.')
  return batches


def blank_unless(valid: tf.Tensor, value: tf.Tensor, pad: int) -> tf.Tensor:
  """`value` where `valid`, else filled with `pad` (padding rows of the final eval batch)."""
  return tf.where(valid, value, tf.cast(tf.fill(tf.shape(value), pad), value.dtype))


READ_CHUNK = 32  # Records fetched per random-access call.


def host_example_order(epoch: tf.Tensor, *, num_examples: int, seed: int, shuffle: bool,
                       process_index: int, process_count: int, batch_size: int,
                       num_rows: int) -> tf.Tensor:
  """The example indices one host reads in one epoch, in order (in-graph).

  Args:
    epoch: int64 [], the epoch (seeds the permutation with `seed`).
    num_examples: examples in the split.
    seed, shuffle: permute all examples (identity without shuffle).
    process_index, process_count: global batch b of `process_count * batch_size` positions
      (b * G, ..., (b + 1) * G - 1 of the order) is cut into `process_count` contiguous blocks;
      this host takes block `process_index` of every global batch, so the global batch (hosts
      concatenated in process order) is the same whatever the number of hosts.
    batch_size: per-host batch size.
    num_rows: length of the result, a multiple of batch_size: the order is truncated, or padded
      with -1, to `num_rows * process_count` positions before it is cut.

  Returns:
    int64 [num_rows], example indices; -1 marks padding rows.
  """
  order = tf.range(num_examples, dtype=tf.int64)
  if shuffle:
    order_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64),
                                                          epoch)
    order = tf.random.experimental.stateless_shuffle(order, order_seed)
  total = num_rows * process_count
  order = tf.pad(order, [[0, tf.maximum(total - tf.size(order), 0)]], constant_values=-1)[:total]
  blocks = tf.reshape(order, [num_rows // batch_size, process_count, batch_size])
  return tf.reshape(blocks[:, process_index], [num_rows])


def example_iterator(processor, num_examples: int, *, batch_size: int, seed: int, shuffle: bool,
                     repeat: bool, pad_final_batch: bool, process_index: Optional[int],
                     process_count: Optional[int], num_parallel_calls, where: str,
                     fingerprint: Mapping[str, Any]) -> ResumableIterator:
  """The resumable batch iterator of a split whose example i is processed by `processor`.

  Per epoch: the order of all example indices is a permutation seeded by (seed, epoch) (stored
  order without shuffle); host h takes block h of every global batch of H * batch_size
  positions (host_example_order), so the global batch is the same whatever the number of hosts;
  training drops the remainder (every host gets floor(E / H) // batch_size batches);
  `pad_final_batch` keeps every example and pads to ceil(ceil(E / H) / batch_size) batches per
  host of rows with example_index -1 (the padding falls on the last global batch's last blocks).
  Indices are read in chunks (`processor.read`), processed one by one (`processor(item)`), then
  batched. The whole order is a function of (seed, epoch): a resume slices the index list.
  """
  process_index, process_count = resolve_hosts(process_index, process_count)
  per_epoch = batches_per_epoch(num_examples, process_count, batch_size, pad_final_batch, where)

  def make_dataset(start_epoch: int, start_batch: int) -> tf.data.Dataset:
    def epoch_indices(epoch):
      host = host_example_order(
          epoch, num_examples=num_examples, seed=seed, shuffle=shuffle,
          process_index=process_index, process_count=process_count, batch_size=batch_size,
          num_rows=per_epoch * batch_size)
      start = tf.where(epoch == start_epoch, start_batch * batch_size, 0)
      host = host[tf.cast(start, tf.int32):]
      return tf.data.Dataset.from_tensor_slices(
          {'epoch': tf.fill(tf.shape(host), epoch), 'example_index': host})

    epochs = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max if repeat else 1)
    ds = epochs.flat_map(epoch_indices).batch(READ_CHUNK).map(processor.read)
    ds = ds.unbatch().map(processor, num_parallel_calls=num_parallel_calls)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)

  fingerprint = {**fingerprint, 'seed': seed, 'shuffle': shuffle, 'num_examples': num_examples,
                 'batch_size': batch_size, 'process_index': process_index,
                 'process_count': process_count, 'pad_final_batch': pad_final_batch}
  return ResumableIterator(make_dataset, batches_per_epoch=per_epoch, fingerprint=fingerprint)
