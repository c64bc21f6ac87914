"""What the evaluators exchange between hosts: a few small agreements and one gather per result.

Every host of a multi-host run feeds the same number of identically shaped batches to every jitted
function (a jitted call on global arrays is a collective). Evaluators keep each step's output as
this host's rows (`local_rows`, no communication) and gather them once at the end (`gather`).
On one host every function here is the identity.
"""

from typing import Dict, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def gather(x: np.ndarray) -> np.ndarray:
  """Host-local rows [n, ...] (n equal on every host) -> [hosts * n, ...], host 0's rows first."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_columns(columns: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """`gather` of every column of a dict."""
  return {k: gather(v) for k, v in columns.items()}


def agree(values: Sequence[int]) -> np.ndarray:
  """Every host's small integer vector: [len(values)] -> [hosts, len(values)] int64."""
  return gather(np.asarray(values, np.int64)[None])


def local_rows(x: jax.Array) -> np.ndarray:
  """This host's rows of a batch-sharded global array, in the order `to_device` placed them.

  A host's rows are the union of its addressable shards along the leading axis (replicas of a
  shard, e.g. over a model axis, are taken once), sorted by their global position; that is the
  order in which `jax.make_array_from_process_local_data` laid out the host's local batch.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = {}
  for shard in x.addressable_shards:
    rows = shard.index[0] if shard.index else slice(None)
    shards.setdefault(rows.start or 0, shard.data)
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
