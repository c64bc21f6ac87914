"""Pieces shared by the pre-training trainer (`train.py`) and the fine-tuner (`finetune.py`).

Each is one phase of a trainer: metric writing, the mesh, sharded initialisation, a generic
jitted update step with the NaN guard, FLOP counting. The trainers stay readable top to bottom
and call these in order.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers
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
    os.makedirs(workdir, exist_ok=True)
    self.workdir = workdir
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False)
    if config is not None:
      self.writer.write_hparams({k: v for k, v in config.to_dict().items()
                                 if isinstance(v, (int, float, str, bool))})

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, METRICS_FILE), 'a', encoding='utf-8') as f:
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
  mesh = sharding.create_mesh(config.mesh_shape)
  return MeshSetup(mesh=mesh, rules=sharding.logical_rules(config.sharding_rules),
                   batch_sharding=sharding.batch_sharding(mesh),
                   replicated=NamedSharding(mesh, PartitionSpec()))


def sharded_init(init_fn: Callable[[Array], Any], rng: Array, setup: MeshSetup):
  """eval_shape -> logical specs -> shardings -> jit(init, out_shardings).

  Returns (state, state_sharding, abstract_state); `state` holds boxed (nn.Partitioned) params.
  """
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    abstract_state = jax.eval_shape(init_fn, rng)
    state_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_state),
                                                 setup.mesh, setup.rules)
    state = jax.jit(init_fn, out_shardings=state_sharding)(rng)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(abstract_state.params)))
  logging.info('Parameters: %d', num_params)
  return state, state_sharding, abstract_state


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       rng: Array) -> train_step_lib.TrainState:
  return train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                   opt_state=optimizer.init(params), rng=rng)


def flops(compiled) -> Optional[float]:
  """FLOPs of one compiled step from XLA's cost analysis (None if unavailable)."""
  try:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0]
    return float(analysis.get('flops', 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    logging.warning('XLA cost analysis unavailable: MFU is not reported.')
    return None


def raise_if_nonfinite(nonfinite, step: int) -> None:
  """Raises `NonFiniteLossError` naming the broken losses if any accumulated flag is set."""
  if nonfinite is None:
    return
  bad = metrics_lib.nonfinite_losses(jax.device_get(nonfinite))
  if bad:
    raise NonFiniteLossError(
        f'Non-finite {", ".join(sorted(bad))} at or before step {step}: the update was dropped '
        f'and training stopped before any checkpoint of it was written.')


def merge_flags(accumulated, step_metrics: Mapping[str, Array]):
  """ORs this step's `nonfinite_*` flags into the accumulated ones (on device, no sync)."""
  flags = {k: v for k, v in step_metrics.items() if k.startswith('nonfinite_')}
  if accumulated is None:
    return flags
  return jax.tree_util.tree_map(jnp.logical_or, accumulated, flags)


def restore_latest(config: ml_collections.ConfigDict, workdir: str, state: Any, train_iter,
                   mesh) -> Tuple[Any, Any, bool]:
  """(checkpoint manager, state, resumed): the latest complete checkpoint of `workdir`, if any.

  Restores the train state onto `state`'s shardings and puts the data iterator back at the
  saved position, so the run continues with the same step, rng and batches.
  """
  from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  manager = checkpointing.CheckpointManager(
      os.path.join(workdir, 'checkpoints'), save_every=config.checkpoint_every,
      keep=config.keep_checkpoints, async_save=config.get('async_checkpointing', True))
  latest = manager.latest_step()
  if latest is None:
    return manager, state, False
  with jax.set_mesh(mesh):
    state, data_state = manager.restore(latest, state)
  train_iter.set_state(data_state)
  logging.info('Resumed from step %d.', latest)
  return manager, state, True


def save_or_stop(manager, preemption, state, train_iter, done: int, is_last: bool,
                 nonfinite) -> bool:
  """Periodic (and final) save; on SIGTERM a forced save, a wait, and True to stop the loop."""
  manager.save(done, state, train_iter.get_state(), force=is_last)
  if is_last or not preemption.should_stop():
    return False
  raise_if_nonfinite(nonfinite, done)
  manager.save(done, state, train_iter.get_state(), force=True)
  manager.wait()
  logging.warning('Preempted: saved step %d and stopped.', done)
  return True
