"""Simulated JAX hosts for evaluator tests: one thread per host in one process.

`jax.process_count`, `jax.process_index` and `multihost_utils.process_allgather` are replaced
(via pytest's monkeypatch) by thread-aware versions: each thread is a host, and an allgather is a
barrier at which every host deposits its array and gets all of them, host 0's first. As with real
collectives, every host must make the same sequence of gathers with equal shapes: a host that
gathers more often, or another shape, makes the run fail instead of returning wrong numbers.
Each host runs its jitted functions on its own rows only (`to_device` puts them on one device), so
a test also records every host's device steps to check that the hosts ran the same number.
"""

import threading
from typing import Callable, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


class FakeHosts:
  """`n` simulated hosts; `run(fns)` calls fns[h]() on host h and returns their results."""

  def __init__(self, n: int, monkeypatch, timeout: float = 120.0):
    self.n = n
    self._local = threading.local()
    self._barrier = threading.Barrier(n, timeout=timeout)
    self._slots: List[np.ndarray] = [None] * n
    self.steps: List[List[tuple]] = [[] for _ in range(n)]  # per host: (keys, rows, valid rows)
    monkeypatch.setattr(jax, 'process_count', lambda: n)
    monkeypatch.setattr(jax, 'process_index', lambda: self._local.index)
    monkeypatch.setattr(multihost_utils, 'process_allgather', self._allgather)

  def _allgather(self, x, tiled: bool = False):
    x = np.asarray(x)
    self._slots[self._local.index] = x
    self._barrier.wait()
    parts = list(self._slots)
    self._barrier.wait()
    if len({p.shape for p in parts}) > 1:
      raise ValueError(f'hosts gathered different shapes: {[p.shape for p in parts]}')
    return np.concatenate(parts) if tiled else np.stack(parts)

  def to_device(self, batch):
    """Places a host batch on one device and records the step."""
    valid = np.asarray(batch['example_valid'])
    self.steps[self._local.index].append((tuple(sorted(batch)), len(valid), int(valid.sum())))
    return {k: jnp.asarray(v) for k, v in batch.items()}

  def run(self, fns: Sequence[Callable[[], object]]) -> list:
    results, errors = [None] * self.n, [None] * self.n

    def host(index):
      self._local.index = index
      try:
        results[index] = fns[index]()
      except BaseException as e:  # pylint: disable=broad-except
        errors[index] = e
        self._barrier.abort()  # the other hosts fail at their next gather instead of hanging

    threads = [threading.Thread(target=host, args=(i,)) for i in range(self.n)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    first = next((e for e in errors if e is not None and
                  not isinstance(e, threading.BrokenBarrierError)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
      raise first
    return results
