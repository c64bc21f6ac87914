"""The evaluator interface: what the trainer gives (`EvalContext`) and what it calls (`Evaluator`).

An evaluator is built from one entry of `config.evals` (see `evaluators.from_config`), has a
`name`, an `every` (steps between runs; 0 = only at the end of training) and
`run(params) -> Iterator[(metric name, float)]` with unboxed params. Metric names are
`{prefix}/{metric}` with the prefix `{split}/{name}` unless the entry sets `prefix`.

`run` must be called under the trainer's mesh and logical-axis-rule contexts (`jax.set_mesh`,
`nn.logical_axis_rules`): `to_device` places host batches on that mesh.

Multi-host: every host reads its own share of the split; all hosts agree once on the number of
steps and run that many identically shaped batches, a host whose share is shorter running a
dummy batch (its first batch with `example_valid` 0). Each step's outputs stay on the host until
the end, where they are gathered once (`evaluators/hosts.py`).
"""

import dataclasses
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from mvp_jax.evaluators import hosts
from mvp_jax.evaluators import progress as progress_lib

Batch = Mapping[str, np.ndarray]
Metrics = Iterator[Tuple[str, float]]
TASKS = ('pretrain', 'retrieval', 'vqa', 've', 're')
# Batch columns that stay on the host: bookkeeping ids (int64, not model inputs).
HOST_ONLY_KEYS = ('example_index', 'question_id')


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What the trainer hands to every evaluator.

  Attributes:
    model: the flax module being trained (`MVPPretrainingModel` or a task model).
    task: the run's task, one of TASKS.
    batches: (split, corrupt) -> list of this host's numpy batches of the split, one ordered
      pass, the last one padded with `example_valid` 0 rows (the trainer caches them).
      `corrupt` asks for the fixed-seed MLM/MCR corruption (pre-training only).
    to_device: a host batch -> dict of global jax arrays sharded over the mesh's batch axes.
    workdir: the run directory (VQA predictions are written there).
    answers: the VQA answer vocabulary (label -> answer string); None for other tasks.
  """
  model: nn.Module
  task: str
  batches: Callable[[str, bool], Sequence[Batch]]
  to_device: Callable[[Batch], Mapping[str, jax.Array]]
  workdir: str
  answers: Optional[Sequence[str]] = None


class Evaluator:
  """Base of every evaluator: name, split, schedule, metric prefix and the host agreement.

  Subclasses set `tasks` (the `context.task` values they evaluate), `corrupt` (which batches
  they read) and implement `run`.
  """
  tasks: Tuple[str, ...] = TASKS
  corrupt: bool = False

  def __init__(self, name: str, context: EvalContext, *, split: str, every: int = 0,
               prefix: Optional[str] = None):
    if context.task not in self.tasks:
      raise ValueError(f'evals.{name}: a {type(self).__name__} evaluates task(s) {self.tasks}, '
                       f'not this run\'s task {context.task!r}.')
    if int(every) < 0:
      raise ValueError(f'evals.{name}: every must be >= 0 (0 = only at the end), got {every}.')
    self.name, self.context, self.split, self.every = name, context, split, int(every)
    self.prefix = f'{split}/{name}' if prefix is None else prefix
    self._jit_cache: Dict[tuple, Callable] = {}

  def metric(self, name: str) -> str:
    return f'{self.prefix}/{name}'

  def run(self, params: Any) -> Metrics:
    """Evaluates unboxed `params`; yields (metric name, value)."""
    raise NotImplementedError

  def read(self) -> Tuple[List[Batch], int, int]:
    """(this host's batches, steps every host runs, rows per batch), agreed over hosts."""
    batches = list(self.context.batches(self.split, self.corrupt))
    rows = len(batches[0]['example_valid']) if batches else 0
    table = hosts.agree([len(batches), rows])  # [hosts, 2]
    if table[:, 0].min() == 0:
      empty = [int(h) for h in np.flatnonzero(table[:, 0] == 0)]
      raise ValueError(f'evals.{self.name}: split {self.split!r} gave no batch on host(s) '
                       f'{empty}; every host needs at least one (padded) batch.')
    if len(set(table[:, 1].tolist())) > 1 or any(
        len(b['example_valid']) != rows for b in batches):
      raise ValueError(f'evals.{self.name}: split {self.split!r} batches differ in size across '
                       f'batches or hosts (rows per host: {table[:, 1].tolist()}); pad every '
                       f'batch to the per-host eval batch size.')
    return batches, int(table[:, 0].max()), rows

  def jitted(self, fn: Callable, device_batch: Mapping[str, jax.Array]) -> Callable:
    """`jax.jit(fn)` whose outputs keep the batch's row sharding (cached per sharding), so
    `hosts.local_rows` finds this host's rows of every output."""
    sharding = getattr(device_batch['example_valid'], 'sharding', None)
    key = (fn, sharding)
    if key not in self._jit_cache:
      self._jit_cache[key] = (jax.jit(fn) if sharding is None
                              else jax.jit(fn, out_shardings=sharding))
    return self._jit_cache[key]


def dummy_batch(batch: Batch) -> Dict[str, np.ndarray]:
  """The fixed padding batch: `batch` with every row invalid."""
  out = dict(batch)
  out['example_valid'] = np.zeros_like(np.asarray(batch['example_valid']))
  return out


def device_columns(batch: Batch) -> Dict[str, np.ndarray]:
  return {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}


class RowEvaluator(Evaluator):
  """Evaluators of per-example values: `rows(params, batch)` (jitted) gives [B, ...] arrays per
  batch; `host_keys` columns are taken from the host batch; the valid rows of the whole split
  are gathered once and reduced by `summarize`."""
  host_keys: Tuple[str, ...] = ()

  def rows(self, params: Any, batch: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
    """Per-example values of one device batch: {key: [B, ...]}."""
    raise NotImplementedError

  def summarize(self, values: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """{metric: value} from the valid rows of the split ({key: [N, ...]})."""
    raise NotImplementedError

  def collect(self, params: Any) -> Dict[str, np.ndarray]:
    """Every valid row of the split over all hosts (host 0's rows first): {key: [N, ...]}."""
    batches, steps, _ = self.read()
    padding = dummy_batch(batches[0])
    progress = progress_lib.Progress(self.name, 'batches', steps)
    local: Dict[str, List[np.ndarray]] = {}
    for step in range(steps):
      batch = batches[step] if step < len(batches) else padding
      device_batch = self.context.to_device(device_columns(batch))
      out = self.jitted(self.rows, device_batch)(params, device_batch)
      out = {k: hosts.local_rows(v) for k, v in out.items()}
      out.update({k: np.asarray(batch[k]) for k in self.host_keys + ('example_valid',)})
      for key, value in out.items():
        local.setdefault(key, []).append(value)
      progress.step()
    values = hosts.gather_columns({k: np.concatenate(v) for k, v in local.items()})
    valid = values.pop('example_valid').astype(bool)
    return {k: v[valid] for k, v in values.items()}

  def run(self, params: Any) -> Metrics:
    results = self.summarize(self.collect(params))
    return iter([(self.metric(k), float(v)) for k, v in results.items()])
