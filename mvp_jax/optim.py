"""Optimiser of the reference code (spec §3): AdamW with decoupled decay, warmup + linear decay.

`pytorch_transformers.AdamW` with β=(0.9, 0.999), eps 1e-8, bias correction, and weight decay
applied after the Adam step as p -= lr·wd·p — which is optax.adamw. Biases and LayerNorm
parameters are excluded from the decay (`bias`, `LayerNorm.weight` in the reference; here every
`bias` and every LayerNorm `scale`); the embeddings, projections and logit_scale are decayed.
"""

from typing import Any, Sequence, Tuple

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int,
                           global_batch_size: int) -> optax.Schedule:
  """Linear warmup from 0 to the peak over `warmup_steps`, then linear decay to 0 at the end.

  With `scale_lr_by_batch`, the peak is lr · global_batch / reference_batch (linear scaling).
  """
  peak = config.lr
  if config.get('scale_lr_by_batch', False):
    peak = peak * global_batch_size / config.reference_batch_size
  warmup = int(config.warmup_steps)
  if warmup >= total_steps:
    raise ValueError(f'warmup_steps {warmup} must be below the total steps {total_steps}.')
  return optax.join_schedules([
      optax.linear_schedule(0.0, peak, max(warmup, 1)),
      optax.linear_schedule(peak, 0.0, total_steps - warmup),
  ], [warmup])


def param_path(path) -> Tuple[str, ...]:
  """The dict keys of a pytree path (skipping the `value` of a boxed nn.Partitioned)."""
  return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: everything but biases and LayerNorm scales."""

  def decays(path, _):
    names = param_path(path)
    return not (names[-1] == 'bias' or (names[-1] == 'scale' and 'layernorm' in names[-2]))

  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                     global_batch_size: int) -> optax.GradientTransformation:
  """AdamW (+ optional global-norm clipping) with the reference schedule and decay mask."""
  schedule = learning_rate_schedule(config, total_steps, global_batch_size)
  chain = []
  if config.get('grad_clip_norm') and config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def trainable_mask(params: Any, frozen_prefixes: Sequence[str]) -> Any:
  """1.0 for parameters outside the `frozen_prefixes` ('a/b' paths), 0.0 inside; same tree."""
  frozen = [tuple(p.split('/')) for p in frozen_prefixes]

  def value(path, _):
    names = param_path(path)
    return 0.0 if any(names[:len(f)] == f for f in frozen) else 1.0

  return jax.tree_util.tree_map_with_path(value, params)


def global_norm(tree: Any) -> jax.Array:
  return optax.global_norm(tree)
