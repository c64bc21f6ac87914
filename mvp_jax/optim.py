"""Optimiser of the reference code (spec §3): AdamW with decoupled decay, warmup + linear decay.

`pytorch_transformers.AdamW` with β=(0.9, 0.999), eps 1e-8, bias correction, and weight decay
applied after the Adam step as p -= lr·wd·p — which is optax.adamw, written out here as
scale_by_adam → add_decayed_weights → scale_by_learning_rate so that the Adam moments can be kept
per parameter group. Biases and LayerNorm parameters are excluded from the decay (`bias`,
`LayerNorm.weight` in the reference; here every `bias` and every LayerNorm `scale`); the
embeddings, projections and logit_scale are decayed.

Staged training (the pre-training task's `two_stage` schedule) freezes some parameters for a
while. Their Adam moments and bias-correction counter must start when they start training:
otherwise the first update after the switch divides zero-initialised moments by the bias
correction of an advanced step counter and is several times off. `create_optimizer(...,
held_groups=...)` keeps one Adam state per group of `group_prefixes`; a held group's state does
not advance (and its updates are 0) in the stages that freeze it. The learning-rate schedule and
the weight decay follow the global step for every parameter.

A subtree can also have an optimiser of its own (`Subtree`: the vision tower of a pixel model,
`pixel_model.optimizer_subtrees`): frozen (zero updates, no Adam state, no decay), or Adam with
its own learning-rate multiplier (× the global schedule) and weight decay. Clipping stays global.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

TRAINED = 'trained'  # group label of the parameters outside every group prefix


@dataclasses.dataclass(frozen=True)
class Subtree:
  """An 'a/b' parameter prefix with its own optimiser; weight_decay None = the global one."""
  prefix: str
  lr_multiplier: float = 1.0
  weight_decay: Optional[float] = None
  frozen: bool = False


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
  """The dict keys of a pytree path of an (unboxed) params tree."""
  return tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: everything but biases and LayerNorm scales
  (`*layernorm*` in MVPTR, `ln_*` / `*_norm` in the vision towers)."""

  def decays(path, _):
    names = param_path(path)
    parent = names[-2] if len(names) > 1 else ''
    norm = 'layernorm' in parent or parent.startswith('ln') or parent.endswith('_norm')
    return not (names[-1] == 'bias' or (names[-1] == 'scale' and norm))

  return jax.tree_util.tree_map_with_path(decays, params)


def _matches(names: Tuple[str, ...], prefix: str) -> bool:
  parts = tuple(prefix.split('/'))
  return names[:len(parts)] == parts


def group_labels(params: Any, group_prefixes: Sequence[str]) -> Any:
  """Per parameter: the first of `group_prefixes` ('a/b' paths) it lies under, else TRAINED."""

  def label(path, _):
    names = param_path(path)
    return next((p for p in group_prefixes if _matches(names, p)), TRAINED)

  return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(params: Any, frozen_prefixes: Sequence[str]) -> Any:
  """1.0 for parameters outside the `frozen_prefixes` ('a/b' paths), 0.0 inside; same tree."""

  def value(path, _):
    names = param_path(path)
    return 0.0 if any(_matches(names, p) for p in frozen_prefixes) else 1.0

  return jax.tree_util.tree_map_with_path(value, params)


def hold(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner`'s state, left unchanged, and zero updates: a group that this stage does not train.

  Same state structure as `inner`, so the compiled steps of two stages share one train state.
  """

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(jnp.zeros_like, updates), state

  return optax.GradientTransformation(inner.init, update)


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                     global_batch_size: int, *, group_prefixes: Sequence[str] = (),
                     held_groups: Sequence[str] = (),
                     subtrees: Sequence[Subtree] = ()) -> optax.GradientTransformation:
  """AdamW (+ optional global-norm clipping) with the reference schedule and decay mask.

  Args:
    config: `config.optimizer` (lr, warmup_steps, weight_decay, b1, b2, eps, grad_clip_norm, ...).
    total_steps: steps of the whole run (the schedule decays to 0 there).
    global_batch_size: for `scale_lr_by_batch`.
    group_prefixes: parameter groups ('a/b' path prefixes) with an Adam state of their own;
      the other parameters form the TRAINED group. Every stage of a run must pass the same list.
    held_groups: the groups of `group_prefixes` that this stage does not train: their Adam
      state does not advance and their Adam updates are 0 (the trainer also zeroes their decay).
    subtrees: `Subtree`s with an optimiser of their own, checked before `group_prefixes`.
  """
  schedule = learning_rate_schedule(config, total_steps, global_batch_size)
  adam = lambda: optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
  if subtrees:
    return _with_subtrees(config, schedule, adam, group_prefixes, held_groups, subtrees)
  if group_prefixes:
    prefixes = tuple(group_prefixes)
    unknown = sorted(set(held_groups) - set(prefixes))
    if unknown:
      raise ValueError(f'held_groups {unknown} are not among group_prefixes {list(prefixes)}.')
    transforms = {TRAINED: adam()}
    transforms.update({p: hold(adam()) if p in held_groups else adam() for p in prefixes})
    moments = optax.multi_transform(transforms, lambda params: group_labels(params, prefixes))
  else:
    moments = adam()
  chain = []
  if config.get('grad_clip_norm') and config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain += [moments, optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.scale_by_learning_rate(schedule)]
  return optax.chain(*chain)


def _with_subtrees(config, schedule, adam, group_prefixes, held_groups,
                   subtrees) -> optax.GradientTransformation:
  """One `multi_transform` over subtrees, then groups, then TRAINED; each label its own Adam,
  decay and learning rate; a frozen subtree `set_to_zero`."""
  prefixes = tuple(s.prefix for s in subtrees) + tuple(group_prefixes)
  if len(set(prefixes)) != len(prefixes):
    raise ValueError(f'subtree / group prefixes repeat: {list(prefixes)}.')

  def scaled(moments, decay, multiplier=1.0):
    lr = schedule if multiplier == 1.0 else (lambda step: multiplier * schedule(step))
    return optax.chain(moments, optax.add_decayed_weights(decay, mask=decay_mask),
                       optax.scale_by_learning_rate(lr))

  transforms = {TRAINED: scaled(adam(), config.weight_decay)}
  transforms.update({p: scaled(hold(adam()) if p in held_groups else adam(), config.weight_decay)
                     for p in group_prefixes})
  for s in subtrees:
    decay = config.weight_decay if s.weight_decay is None else s.weight_decay
    transforms[s.prefix] = (optax.set_to_zero() if s.frozen
                            else scaled(adam(), decay, s.lr_multiplier))
  chain = []
  if config.get('grad_clip_norm') and config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  chain.append(optax.multi_transform(transforms, lambda params: group_labels(params, prefixes)))
  return optax.chain(*chain)


def global_norm(tree: Any) -> jax.Array:
  return optax.tree.norm(tree)
