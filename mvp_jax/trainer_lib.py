"""Phases of the trainer (`train.py`) that would crowd its top-to-bottom reading.

Metric writing, the mesh, sharded initialisation into an unboxed train state with its shardings,
FLOP counting, the host side of the NaN guard, and the save-or-stop step of the loop.
"""

import dataclasses
import itertools
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath
from jax._src import distributed as jax_distributed
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvp_jax import metrics as metrics_lib
from mvp_jax import sharding
from mvp_jax import train_step as train_step_lib

Array = jax.Array
METRICS_FILE = 'metrics.jsonl'


class NonFiniteLossError(RuntimeError):
  """A loss or the gradient norm became NaN/Inf; nothing after it was checkpointed."""


class ScalarWriter:
  """TensorBoard + console (clu) and `<workdir>/metrics.jsonl` (process 0) for notebooks."""

  def __init__(self, workdir: str, config: Optional[ml_collections.ConfigDict] = None):
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    self.workdir = workdir
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if config is not None:
      self.writer.write_hparams({k: v for k, v in config.to_dict().items()
                                 if isinstance(v, (int, float, str, bool))})

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
      with (epath.Path(self.workdir) / METRICS_FILE).open('a', encoding='utf-8') as f:
        f.write(json.dumps({'step': step, **{k: float(v) for k, v in scalars.items()}}) + '\n')

  def flush(self) -> None:
    self.writer.flush()


@dataclasses.dataclass(frozen=True)
class MeshSetup:
  """The device mesh, its logical-axis rules and the two shardings every trainer needs."""
  mesh: Mesh
  rules: Tuple[Tuple[str, Any], ...]
  batch_sharding: NamedSharding
  replicated: NamedSharding

  @property
  def num_data_shards(self) -> int:
    return sharding.num_data_shards(self.mesh)


def create_mesh(config: ml_collections.ConfigDict) -> MeshSetup:
  """`config.mesh_shape` (data, fsdp, tensor) and `config.sharding_rules`."""
  mesh = sharding.create_mesh(config.mesh_shape, dcn_shape=config.get('mesh_dcn_shape'))
  return MeshSetup(mesh=mesh, rules=sharding.logical_rules(config.sharding_rules),
                   batch_sharding=sharding.batch_sharding(mesh),
                   replicated=NamedSharding(mesh, PartitionSpec()))


def sharded_init(init_params: Callable[[Array], Any], optimizer: optax.GradientTransformation,
                 rng: Array, setup: MeshSetup,
                 options: Optional[Dict[str, str]] = None) -> Tuple[train_step_lib.TrainState, Any]:
  """eval_shape -> logical specs -> shardings -> jit(init, out_shardings), unboxed once.

  `init_params(rng)` returns the model's boxed (nn.Partitioned) parameters; their logical axis
  names give the parameter shardings, and every optimiser-state array that mirrors a parameter
  (Adam moments, also inside `multi_transform` groups) gets that parameter's sharding. Returns (state, state_sharding): a TrainState of plain arrays
  (step 0) and the matching tree of NamedShardings, kept beside it for jit and restore.
  `options` are XLA compiler options of the init program (`xla_options.compiler_options`).
  """
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    boxed = jax.eval_shape(init_params, rng)
    param_sharding = sharding.param_shardings(boxed, setup.mesh, setup.rules)
    abstract_params = _values(boxed)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_sharding = _like_params(abstract_opt, abstract_params, param_sharding, setup.replicated)
    state_sharding = train_step_lib.TrainState(step=setup.replicated, params=param_sharding,
                                               opt_state=opt_sharding, rng=setup.replicated)

    def init(rng):
      params_rng, state_rng = jax.random.split(rng)
      params = nn.unbox(init_params(params_rng))
      return train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=optimizer.init(params), rng=state_rng)

    state = jax.jit(init, out_shardings=state_sharding, compiler_options=options)(rng)
  logging.info('Parameters: %d', sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
  return state, state_sharding


def _like_params(opt_state: Any, params: Any, param_sharding: Any, default: NamedSharding):
  """Shardings of an (abstract) optimiser state: a leaf whose path ends with a parameter's path
  and has its shape takes the parameter's sharding; counters and the rest are `default`."""
  flat = {tuple(k.key for k in path): (leaf.shape, sharding) for (path, leaf), sharding in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(param_sharding))}

  def sharding_of(path, leaf):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for start in range(len(keys)):
      shape, sharding = flat.get(keys[start:], (None, None))
      if sharding is not None and shape == leaf.shape:
        return sharding
    return default

  return jax.tree_util.tree_map_with_path(sharding_of, opt_state)


def _values(tree: Any) -> Any:
  """The arrays of a boxed tree, without the sharding constraint `nn.unbox` adds."""
  return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                                is_leaf=lambda x: isinstance(x, nn.Partitioned))


_BARRIERS = itertools.count()


def wait_for_all_hosts(name: str, timeout_s: int = 3600) -> None:
  """A barrier of JAX's coordination service (no device collective), a no-op on one host.

  Hosts call it after compiling a step: the first collective of the step then starts on every
  host at once, so a host that compiled later cannot miss a collective backend's rendezvous
  deadline (gloo's is 30 s on CPU).
  """
  if jax.process_count() == 1:
    return
  # Barrier ids must be unique; every host makes the same sequence of calls.
  name = f'{name} #{next(_BARRIERS)}'
  jax_distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def flops(compiled) -> Optional[float]:
  """FLOPs of one device's program of a compiled step (XLA's cost analysis; None if absent)."""
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis.get('flops', 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    logging.warning('XLA cost analysis unavailable: MFU is not reported.')
    return None


class NonFiniteGuard:
  """Host side of the NaN/Inf guard: the steps since the last check, their flags (on device,
  not synced) and the example indices of their batches, to name them when a loss broke."""

  def __init__(self, split: str):
    self.split = split
    self._pending: List[Tuple[int, Mapping[str, Array], Optional[np.ndarray]]] = []

  def add(self, step: int, step_metrics: Mapping[str, Array],
          example_index: Optional[np.ndarray]) -> None:
    flags = {k: v for k, v in step_metrics.items() if k.startswith('nonfinite_')}
    self._pending.append((step, flags, example_index))

  def check(self) -> None:
    """Raises NonFiniteLossError naming the first broken step, its losses and examples."""
    pending, self._pending = self._pending, []
    for step, flags, example_index in pending:
      bad = metrics_lib.nonfinite_losses(jax.device_get(flags))
      if bad:
        examples = ('' if example_index is None else
                    f' on the examples {_format_indices(example_index)} of split '
                    f'{self.split!r} (this host\'s rows of the batch; -1 = padding)')
        raise NonFiniteLossError(
            f'Non-finite {", ".join(sorted(bad))} at step {step}{examples}: the update was '
            f'dropped and training stopped before any checkpoint of it was written.')


def _format_indices(indices: Sequence[int], limit: int = 64) -> str:
  values = [int(i) for i in np.asarray(indices).reshape(-1)]
  shown = values[:limit]
  return str(shown) + (f' (+{len(values) - limit} more)' if len(values) > limit else '')


def save_or_stop(manager, preemption, state, train_iter, done: int, is_last: bool,
                 guard: NonFiniteGuard) -> bool:
  """Periodic (and final) save; on SIGTERM a forced save, a wait, and True to stop the loop.

  The stop is decided before the save: on several hosts orbax's `save` itself saves a step at
  which the hosts reached their preemption sync point, so that step must be NaN-checked first.
  """
  stop = not is_last and preemption.should_stop(done, manager)
  if stop:
    guard.check()
  manager.save(done, state, train_iter.get_state(), force=is_last or stop)
  if not stop:
    return False
  manager.wait()
  logging.warning('Preempted: saved step %d and stopped.', done)
  return True
