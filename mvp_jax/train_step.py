"""The pre-training objective and the jitted update step.

Schedules (spec §2.1): `joint` computes all five losses every step, as the authors' released code
does. `two_stage` follows the paper's description: stage 1 trains the uni-modal encoders with MCR
and ITC only (the cross-modal encoder is not run and its parameters are not updated), stage 2
trains the whole model with all five losses. The stage is a pure function of the step, so a
resumed run is in the right stage by construction.
"""

from typing import Any, Callable, Dict, Mapping, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mvp_jax import losses
from mvp_jax import optim

Array = jax.Array

ALL_LOSSES = ('mcr', 'itc', 'mlm', 'itm', 'wpg')
STAGE1_LOSSES = ('mcr', 'itc')
# What stage 1 does not train: the cross-modal encoder and everything that sits on it.
STAGE1_FROZEN = ('backbone/cross_encoder', 'backbone/pooler', 'mlm_head', 'itm_head')


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any
  rng: Array


def stage_at(step: int, schedule: str, stage1_steps: int) -> int:
  """1 or 2. `joint` is always stage 2 (everything); `two_stage` switches at stage1_steps."""
  if schedule == 'joint':
    return 2
  if schedule == 'two_stage':
    return 1 if step < stage1_steps else 2
  raise ValueError(f"Unknown schedule {schedule!r}: use 'joint' or 'two_stage'.")


def compute_losses(model: nn.Module, params: Any, batch: Mapping[str, Array], rng: Array, *,
                   stage: int, num_groups: int, weights: Mapping[str, float],
                   deterministic: bool = False) -> Tuple[Array, Dict[str, Array]]:
  """Weighted sum of the stage's losses, and the metrics of each.

  Args:
    model: `MVPPretrainingModel`.
    params: its parameters (unboxed).
    batch: model inputs plus `mlm_labels_a` / `mlm_labels_b` (input_pipeline/features.py).
    rng: PRNG key for dropout, negative mining and the WPG picks.
    stage: 1 (MCR + ITC, uni-modal only) or 2 (all five losses).
    num_groups: negative groups (`local` = one per data shard, `global` = 1).
    weights: per-loss weights.

  Returns:
    (total loss, metrics) where metrics has `loss_<name>` for each computed loss and the counts
    behind the accuracies (`<name>_correct`, `<name>_count`).
  """
  dropout_rng, negatives_rng, wpg_rng = jax.random.split(rng, 3)
  run_cross = stage == 2
  outputs = model.apply({'params': params}, batch, deterministic=deterministic,
                        run_cross=run_cross, hard_negatives=negatives_rng if run_cross else None,
                        negative_groups=num_groups, rngs={'dropout': dropout_rng})
  values, metrics = {}, {}
  values['mcr'], mcr = losses.masked_concept_loss(outputs['vis_mlm_logits'],
                                                  batch['mlm_labels_b'])
  values['itc'], itc = losses.contrastive_loss(outputs['sim_mat'], outputs['logit_scale'],
                                               num_groups)
  metrics.update(mcr_correct=mcr['correct'], mcr_count=mcr['count'],
                 itc_correct=itc['t2i_correct'] + itc['i2t_correct'], itc_count=2 * itc['count'],
                 logit_scale=outputs['logit_scale'])
  if run_cross:
    values['mlm'], mlm = losses.masked_language_loss(outputs['mlm_logits'],
                                                     batch['mlm_labels_a'])
    values['itm'], itm = losses.matching_loss(outputs['itm_logits'])
    values['wpg'], wpg = losses.phrase_grounding_loss(
        wpg_rng, outputs['cross_sequence_output'], batch['phrase_index'], batch['img_index'],
        num_groups)
    metrics.update(mlm_correct=mlm['correct'], mlm_count=mlm['count'],
                   itm_correct=itm['correct'], itm_count=itm['count'],
                   wpg_count=wpg['count'], wpg_pos=wpg['pos'], wpg_neg=wpg['neg'])
  total = sum(weights.get(name, 1.0) * value for name, value in values.items())
  metrics.update({f'loss_{name}': value for name, value in values.items()})
  metrics['loss'] = total
  return total, metrics


def make_update_step(loss_fn: Callable[[Any, Mapping[str, Array], Array],
                                       Tuple[Array, Dict[str, Array]]],
                     optimizer: optax.GradientTransformation,
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
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Mapping[str, Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (_, metrics), grads = grad_fn(state.params, batch, rng)
    else:
      micro = jax.tree_util.tree_map(
          lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

      def accumulate(carry, inputs):
        index, micro_batch = inputs
        (_, metrics), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, index))
        return jax.tree_util.tree_map(jnp.add, carry, (grads, metrics)), None

      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      metric_shapes = jax.eval_shape(loss_fn, state.params, first, rng)[1]
      zeros = (jax.tree_util.tree_map(jnp.zeros_like, state.params),
               jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
      (grads, metrics), _ = jax.lax.scan(accumulate, zeros,
                                         (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree_util.tree_map(lambda g: g / grad_accum_steps, grads)
      metrics = {k: v if k.endswith(('_correct', '_count')) else v / grad_accum_steps
                 for k, v in metrics.items()}
    grad_norm = optim.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    if frozen_mask is not None:
      updates = jax.tree_util.tree_map(lambda u, m: u * m, updates, frozen_mask)
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


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    schedule_fn: Callable[[Array], Array], *, stage: int, num_groups: int,
                    weights: Mapping[str, float], grad_accum_steps: int = 1,
                    frozen_mask: Any = None) -> Callable:
  """The pre-training `train_step(state, batch) -> (state, metrics)` of one stage (jit outside)."""

  def loss_fn(params, batch, rng):
    return compute_losses(model, params, batch, rng, stage=stage, num_groups=num_groups,
                          weights=weights)

  return make_update_step(loss_fn, optimizer, schedule_fn, grad_accum_steps=grad_accum_steps,
                          frozen_mask=frozen_mask)
