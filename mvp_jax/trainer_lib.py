"""Pieces shared by the pre-training trainer (`train.py`) and the fine-tuner (`finetune.py`).

Each is one phase of a trainer: metric writing, the mesh, sharded initialisation, a generic
jitted update step with the NaN guard, FLOP counting. The trainers stay readable top to bottom
and call these in order.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvp_jax import metrics as metrics_lib
from mvp_jax import optim
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


def make_update_step(loss_fn: Callable[[Any, Mapping[str, Array], Array],
                                       Tuple[Array, Dict[str, Array]]],
                     optimizer: optax.GradientTransformation,
                     schedule_fn: Callable[[Array], Array]) -> Callable:
  """`step(state, batch) -> (state, metrics)` for any `loss_fn(params, batch, rng)`.

  The per-step rng is `fold_in(state.rng, step)`. Metrics get `loss_<name>` from the loss,
  `grad_norm`, `learning_rate` and `nonfinite_<name>` flags: if any loss or the gradient norm is
  not finite the update is dropped, so nothing non-finite can be checkpointed (the host raises
  `NonFiniteLossError` on the flags).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: train_step_lib.TrainState, batch: Mapping[str, Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    (_, metrics), grads = grad_fn(state.params, batch, rng)
    grad_norm = optim.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    nonfinite = {f'nonfinite_{k[5:]}': ~jnp.isfinite(v) for k, v in metrics.items()
                 if k.startswith('loss_')}
    nonfinite['nonfinite_loss'] = ~jnp.isfinite(metrics['loss'])
    nonfinite['nonfinite_grad_norm'] = ~jnp.isfinite(grad_norm)
    ok = ~jnp.any(jnp.stack(list(nonfinite.values())))
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(new_params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    return new_state, dict(metrics, grad_norm=grad_norm, learning_rate=schedule_fn(state.step),
                           **nonfinite)

  return step


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
