"""The five MVPTR pre-training objectives as small pure functions (spec §2).

Each returns `(loss, metrics)` where `metrics` holds the counts needed for accuracies. Where the
reference code yields NaN (no masked token, no phrase in the batch) these return 0 with the
normaliser clamped to 1, so a batch without such items contributes nothing instead of poisoning
the sum.

Normalisation under `local` negatives (`num_groups` = G > 1, one group per data shard): every
loss is the mean over the G contiguous groups of the batch of that group's own mean, which is
what the authors' per-GPU losses averaged over GPUs computed. For ITC and ITM every group has the
same number of terms, so this equals the global mean; for MLM / MCR (masked tokens) and WPG
(samples with phrases) the per-group counts differ, and a group without any term is left out of
the average. With `global` negatives (G = 1) each loss is the mean over the whole batch. Gradient
accumulation over k micro-batches with G = 1 therefore equals one step with G = k groups.

Shapes: B batch, La text length, L cross-modal length, R region slots, V word vocabulary.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from mvp_jax import negatives
from mvp_jax import sharding

Array = jax.Array
LossAndMetrics = Tuple[Array, Dict[str, Array]]

WPG_MARGIN = 0.2
WPG_TOP_K = 3


def grouped_mean(values: Array, weights: Array, num_groups: int = 1) -> Array:
  """Mean over the G groups that have weight of (sum of values / sum of weights) per group.

  Args:
    values: [B, ...] terms, already 0 where the weight is 0.
    weights: [B, ...] (0/1) weights of the terms, same shape.
    num_groups: G contiguous groups of the leading (batch) axis; 1 = one global mean.

  Returns:
    [] the loss; 0 when no group has any weight.
  """
  if values.shape[0] % num_groups:
    raise ValueError(f'Batch {values.shape[0]} is not divisible into {num_groups} groups.')
  sums = values.reshape(num_groups, -1).sum(1)
  counts = weights.reshape(num_groups, -1).astype(jnp.float32).sum(1)
  per_group = sums / jnp.maximum(counts, 1.0)
  has_terms = counts > 0
  return jnp.where(has_terms, per_group, 0.0).sum() / jnp.maximum(has_terms.sum(), 1)


def masked_token_loss(logits: Array, labels: Array, num_groups: int = 1) -> LossAndMetrics:
  """Cross-entropy at positions with label >= 0, averaged over those positions (MLM and MCR).

  Args:
    logits: [B, ..., V] float logits.
    labels: [B, ...] int ids, -1 where there is no target.
    num_groups: per-group means averaged over groups (`local`, see the module docstring).

  Returns:
    (mean loss, {'count', 'correct'}). With no target at all the loss is 0 (the reference: NaN).
  """
  valid = labels >= 0
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  loss = grouped_mean(jnp.where(valid, nll, 0.0), valid, num_groups)
  correct = (valid & (jnp.argmax(logits, axis=-1) == labels)).sum()
  return loss, {'count': valid.sum(), 'correct': correct}


def masked_language_loss(mlm_logits: Array, mlm_labels_a: Array,
                         num_groups: int = 1) -> LossAndMetrics:
  """MLM on the cross-modal text positions (spec §2.6): logits [B, La, V], labels [B, La]."""
  return masked_token_loss(mlm_logits[:, :mlm_labels_a.shape[1]], mlm_labels_a, num_groups)


def masked_concept_loss(vis_mlm_logits: Array, mlm_labels_b: Array,
                        num_groups: int = 1) -> LossAndMetrics:
  """MCR on the visual-encoder tag positions (spec §2.3): logits [B, T+R, V], labels [B, T]."""
  return masked_token_loss(vis_mlm_logits[:, :mlm_labels_b.shape[1]], mlm_labels_b, num_groups)


def true_match_mask(caption_meaning: Array, image_meanings: Array) -> Array:
  """[B, B] bool: caption i is true of image j (input_pipeline/true_matches.py columns).

  Args:
    caption_meaning: [B] int32 meaning id of each row's caption, -1 on padding rows.
    image_meanings: [B, K] int32 ids true of each row's image, padded with -1.
  """
  hit = (image_meanings[None, :, :] == caption_meaning[:, None, None]).any(-1)
  return hit & (caption_meaning >= 0)[:, None]


def _false_negatives(true_matches: Array, num_groups: int, block: int) -> Array:
  """The off-diagonal true matches of each group: [B, B] -> [G, b, b] bool."""
  blocks = true_matches if true_matches.ndim == 3 else negatives.group_blocks(true_matches,
                                                                              num_groups)
  return blocks & ~jnp.eye(block, dtype=bool)


def contrastive_loss(sim_mat: Array, logit_scale: Array, num_groups: int = 1,
                     true_matches: Optional[Array] = None) -> LossAndMetrics:
  """Symmetric InfoNCE on exp(logit_scale)·sim (ITC/VSC, spec §2.4).

  Args:
    sim_mat: [B, B] cosine similarities, rows texts, columns images; pair i is (text i, image i);
      or the model's `sim_blocks` [G, B/G, B/G], the G diagonal blocks (shard-local).
    logit_scale: [] learnable log-temperature (not clamped, as in the reference).
    num_groups: `local` negatives: each of the G contiguous groups only sees its own samples and
      the loss is the mean over groups (what averaging per-GPU losses did); 1 = global batch.
    true_matches: optional [B, B] bool (`true_match_mask`): caption i is true of image j. The
      off-diagonal true matches are false negatives and are left out of both softmax
      denominators (logit -inf); None computes exactly the authors' loss.

  Returns:
    (loss, {'t2i_correct', 'i2t_correct', 'count'}).
  """
  scaled = sim_mat * jnp.exp(logit_scale)
  logits = scaled if scaled.ndim == 3 else negatives.group_blocks(scaled, num_groups)  # [G, b, b]
  targets = jnp.arange(logits.shape[1])
  if true_matches is not None:
    logits = jnp.where(_false_negatives(true_matches, num_groups, logits.shape[1]), -jnp.inf,
                       logits)

  def cross_entropy(x):
    log_probs = jax.nn.log_softmax(x, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[None, :, None], axis=-1).mean()

  loss = 0.5 * (cross_entropy(logits) + cross_entropy(jnp.swapaxes(logits, 1, 2)))
  return loss, {
      't2i_correct': (jnp.argmax(logits, axis=2) == targets).sum(),
      'i2t_correct': (jnp.argmax(logits, axis=1) == targets).sum(),
      'count': jnp.asarray(logits.shape[0] * logits.shape[1]),
  }


def matching_loss(itm_logits: Array) -> LossAndMetrics:
  """ITM cross-entropy over positives and hard negatives (spec §2.5).

  `itm_logits` is [2B, 2] (positives then negatives) or the model's `itm_pair_logits`
  [B, 2, 2] (row k: [positive k, negative k], which keeps pair k on its shard). Pre-training
  convention: label 0 = matched, 1 = mismatched. The mean over all rows equals the mean of
  per-group means (every group has 2B/G rows).
  """
  if itm_logits.ndim == 3:
    labels = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), itm_logits.shape[:2])
  else:
    num_pairs = itm_logits.shape[0] // 2
    labels = jnp.concatenate([jnp.zeros(num_pairs, jnp.int32), jnp.ones(num_pairs, jnp.int32)])
  log_probs = jax.nn.log_softmax(itm_logits.astype(jnp.float32), axis=-1)
  loss = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean()
  correct = (jnp.argmax(itm_logits, axis=-1) == labels).sum()
  return loss, {'correct': correct, 'count': jnp.asarray(labels.size)}


def span_mask(index: Array, length: int) -> Array:
  """[B, 2] [start, end) ranges -> [B, length] bool mask."""
  positions = jnp.arange(length)[None, :]
  return (positions >= index[:, :1]) & (positions < index[:, 1:2])


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """`F.normalize`: x / max(||x||, eps), with a finite gradient at an all-zero vector.

  `jnp.linalg.norm` has a NaN gradient at 0 (even where `maximum` discards it), so the clamp is
  applied to the squared norm before the square root; for ||x|| >= eps the value is unchanged.
  """
  squared = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(squared, eps * eps))


def _top_k_values(x: Array, k: int) -> Array:
  """`jax.lax.top_k(x, k)[0]` as k rounds of argmax (k is 3): the same values and gradients
  (ties to the lowest index), but partitioned along the batch, where XLA's SPMD partitioner
  all-gathers a batch-sharded sort."""
  positions = jnp.arange(x.shape[-1])
  values = []
  for _ in range(k):
    index = jnp.argmax(x, axis=-1)[..., None]
    values.append(jnp.take_along_axis(x, index, axis=-1)[..., 0])
    x = jnp.where(positions == index, -jnp.inf, x)
  return jnp.stack(values, axis=-1)


def sampled_top_k_similarity(rng: Array, similarity: Array, phrase_mask: Array,
                             region_mask: Array, top_k: int = WPG_TOP_K) -> Array:
  """`t2i_sim`: per phrase, one of its top-k region similarities at random; mean over phrases.

  Args:
    rng: PRNG key for the uniform pick among the top k.
    similarity: [B, P, R] phrase-region cosines.
    phrase_mask: [B, P] real phrases; region_mask [B, R] real regions.
    top_k: 3 in the reference. An image with fewer than k regions picks among those it has (the
      reference crashes there).

  Returns:
    [B] mean picked similarity; 0 for a sample without phrases or regions.
  """
  masked = jnp.where(region_mask[:, None, :], similarity, -jnp.inf)
  k = min(top_k, similarity.shape[-1])
  top_values = _top_k_values(masked, k)  # [B, P, k], descending
  available = jnp.minimum(region_mask.sum(-1), k)[:, None]  # [B, 1]
  pick = jax.random.randint(rng, phrase_mask.shape, 0, jnp.maximum(available, 1))
  picked = jnp.take_along_axis(top_values, pick[..., None], axis=-1)[..., 0]
  valid = phrase_mask & (available > 0)
  total = jnp.where(valid, picked, 0.0).sum(-1)
  return total / jnp.maximum(valid.sum(-1), 1)


def phrase_grounding_loss(rng: Array, cross_sequence: Array, phrase_index: Array,
                          img_index: Array, num_groups: int = 1, margin: float = WPG_MARGIN
                          ) -> LossAndMetrics:
  """Weakly-supervised phrase grounding (WPG, spec §2.7).

  pos_i = t2i_sim(phrases of i, regions of i); neg_i = t2i_sim(phrases of i, regions of j) with j
  a uniformly drawn other sample of i's group; both read from the positive pairs' cross-modal
  outputs. loss = mean over samples with phrases of max(0, neg_i + margin − pos_i), per group and
  then over the groups that have phrases (see the module docstring).

  Args:
    rng: PRNG key (negative choice and top-k picks).
    cross_sequence: [B, L, H] cross-modal output of the positive pairs.
    phrase_index: [B, 2] [start, end) of the phrases; img_index [B, 2] of the real regions,
      both absolute positions in the cross-modal sequence.
    num_groups: negatives drawn, and the loss normalised, within each of G contiguous groups
      (`local`) or globally (1).
    margin: hinge margin (0.2).

  Returns:
    (loss, {'count': samples with phrases, 'pos': mean pos, 'neg': mean neg}). Without any phrase
    in the batch the loss is 0 (the reference: NaN).
  """
  batch, length = cross_sequence.shape[:2]
  normed = _l2_normalize(cross_sequence.astype(jnp.float32))
  phrase_mask = span_mask(phrase_index, length)
  region_mask = span_mask(img_index, length)
  similarity = jnp.einsum('bph,brh->bpr', normed, normed)  # [B, L, L]
  other = negatives.random_other_index(jax.random.fold_in(rng, 0), batch, num_groups)
  # Group-local takes: `other` stays in each row's group, so no activation leaves its shard.
  similarity_neg = jnp.einsum('bph,brh->bpr', normed,
                              sharding.take_within_groups(normed, other, num_groups))
  pos = sampled_top_k_similarity(jax.random.fold_in(rng, 1), similarity, phrase_mask,
                                 region_mask)
  neg = sampled_top_k_similarity(jax.random.fold_in(rng, 2), similarity_neg, phrase_mask,
                                 sharding.take_within_groups(region_mask, other, num_groups))
  has_phrase = phrase_mask.any(-1)
  count = has_phrase.sum()
  hinge = jnp.maximum(0.0, neg + margin - pos)
  loss = grouped_mean(jnp.where(has_phrase, hinge, 0.0), has_phrase, num_groups)
  denominator = jnp.maximum(count, 1)
  return loss, {'count': count,
                'pos': jnp.where(has_phrase, pos, 0.0).sum() / denominator,
                'neg': jnp.where(has_phrase, neg, 0.0).sum() / denominator}
