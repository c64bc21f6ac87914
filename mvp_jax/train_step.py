"""The train state and the update step of every task (jit outside, in `train.py`).

A task gives a loss function `(params, batch, rng) -> (loss, metrics)` (`mvp_jax/tasks/`); this
module turns it into `step(state, batch) -> (state, metrics)` with gradient accumulation, the
optimiser, the frozen-parameter mask of a stage and the NaN/Inf guard. Parameters are plain
(unboxed) arrays; their shardings live beside the state in the trainer.
"""

from typing import Any, Callable, Dict, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from mvp_jax import optim

Array = jax.Array
LossFn = Callable[[Any, Mapping[str, Array], Array], Tuple[Array, Dict[str, Array]]]


@flax.struct.dataclass
class TrainState:
  """step [] int32, params (unboxed nested dict of arrays), opt_state, rng (PRNG key)."""
  step: Array
  params: Any
  opt_state: Any
  rng: Array


def accumulated_gradients(loss_fn: LossFn, params: Any, batch: Mapping[str, Array], rng: Array,
                          grad_accum_steps: int = 1) -> Tuple[Any, Dict[str, Array]]:
  """(gradients, metrics) of `loss_fn` averaged over `grad_accum_steps` micro-batches.

  The batch's leading dimension is split into contiguous micro-batches; micro-batch i uses
  `fold_in(rng, i)`. Counts (`*_correct`, `*_count`) are summed, everything else averaged.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, metrics), grads = grad_fn(params, batch, rng)
    return grads, metrics
  micro = jax.tree_util.tree_map(
      lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

  def accumulate(carry, inputs):
    index, micro_batch = inputs
    (_, metrics), grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
    return jax.tree_util.tree_map(jnp.add, carry, (grads, metrics)), None

  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  metric_shapes = jax.eval_shape(loss_fn, params, first, rng)[1]
  zeros = (jax.tree_util.tree_map(jnp.zeros_like, params),
           jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
  (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
  grads = jax.tree_util.tree_map(lambda g: g / grad_accum_steps, grads)
  metrics = {k: v if k.endswith(('_correct', '_count')) else v / grad_accum_steps
             for k, v in metrics.items()}
  return grads, metrics


def make_update_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                     schedule_fn: Callable[[Array], Array], *, grad_accum_steps: int = 1,
                     frozen_mask: Any = None) -> Callable:
  """Builds `step(state, batch) -> (state, metrics)` for any `loss_fn(params, batch, rng)`.

  The per-step rng is `fold_in(state.rng, step)`. The batch's leading dimension is split into
  `grad_accum_steps` micro-batches whose gradients are averaged (negatives are mined inside each
  micro-batch). If any loss or the gradient norm is not finite the update is dropped (the state
  keeps its parameters) and `nonfinite_<loss>` flags tell the host which loss broke, so nothing
  non-finite can ever be checkpointed. `frozen_mask` (1 = train, 0 = keep) zeroes the updates
  of parameters a stage does not train. Metrics also get `grad_norm` and `learning_rate`.
  """
  def step(state: TrainState, batch: Mapping[str, Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    grads, metrics = accumulated_gradients(loss_fn, state.params, batch, rng, grad_accum_steps)
    grad_norm = optim.global_norm(grads)
    nonfinite = {f'nonfinite_{k[5:]}': ~jnp.isfinite(v) for k, v in metrics.items()
                 if k.startswith('loss_')}
    nonfinite['nonfinite_loss'] = ~jnp.isfinite(metrics['loss'])
    nonfinite['nonfinite_grad_norm'] = ~jnp.isfinite(grad_norm)
    ok = ~jnp.any(jnp.stack(list(nonfinite.values())))

    def apply(operands):
      params, opt_state, grads = operands
      updates, opt_state = optimizer.update(grads, opt_state, params)
      if frozen_mask is not None:
        updates = jax.tree_util.tree_map(lambda u, m: u * m, updates, frozen_mask)
      return optax.apply_updates(params, updates), opt_state

    # A conditional, not a `where` over every parameter and moment: a finite step runs only the
    # update (in place on donated buffers), a non-finite one only hands the old state back.
    new_params, opt_state = jax.lax.cond(ok, apply, lambda operands: operands[:2],
                                         (state.params, state.opt_state, grads))
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)
    return new_state, dict(metrics, grad_norm=grad_norm, learning_rate=schedule_fn(state.step),
                           **nonfinite)

  return step
