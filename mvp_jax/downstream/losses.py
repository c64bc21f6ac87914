"""Fine-tuning objectives of the four downstream tasks (spec §4), as small pure functions.

Each returns `(loss, metrics)`; `metrics` holds the counts behind the training accuracies.
Shapes: B batch, C answers / classes, R regions.

Normalisation follows `mvp_jax/losses.py`: with `num_groups` G > 1 (`local` negatives) a loss is
the mean of per-group means. Retrieval's ITC / ITM, VQA and VE have the same number of terms in
every group, so their batch means are exactly that; the referring loss (valid regions vary per
example) takes `num_groups` explicitly.
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from mvp_jax import losses
from mvp_jax.downstream import metrics as task_metrics

Array = jax.Array
LossAndMetrics = Tuple[Array, Dict[str, Array]]


def matching_labels(num_pairs: int) -> Array:
  """Retrieval ITM labels of [positives; negatives]: [1]*B + [0]*B (label 1 = matched)."""
  return jnp.concatenate([jnp.ones(num_pairs, jnp.int32), jnp.zeros(num_pairs, jnp.int32)])


def retrieval_loss(sim_mat: Array, logit_scale: Array, match_logits: Array,
                   num_groups: int = 1) -> LossAndMetrics:
  """L_ITC + CE(classifier logits of [positives; hard negatives], [1]*B + [0]*B) (spec §4.1).

  Args:
    sim_mat: [B, B] text-image cosines (rows texts); logit_scale [] learnable log-temperature.
    match_logits: [2B, 2] classifier logits, the B positive pairs first.
    num_groups: `local` ITC negatives per data shard (1 = global batch).

  Returns:
    (loss, {'loss_itc', 'loss_itm', 'itc_correct', 'itc_count', 'itm_correct', 'itm_count'}).
  """
  itc_loss, itc = losses.contrastive_loss(sim_mat, logit_scale, num_groups)
  labels = matching_labels(match_logits.shape[0] // 2)
  itm_loss = optax.softmax_cross_entropy_with_integer_labels(
      match_logits.astype(jnp.float32), labels).mean()
  return itc_loss + itm_loss, {
      'loss_itc': itc_loss, 'loss_itm': itm_loss,
      'itc_correct': itc['t2i_correct'] + itc['i2t_correct'], 'itc_count': 2 * itc['count'],
      'itm_correct': (jnp.argmax(match_logits, -1) == labels).sum(),
      'itm_count': jnp.asarray(labels.shape[0])}


def vqa_loss(answer_logits: Array, answer_targets: Array) -> LossAndMetrics:
  """BCE-with-logits on soft VQA scores, mean over B×C times C (= summed over answers, mean
  over the batch), as `BCEWithLogitsLoss(reduction='mean') * num_labels` (spec §4.2).

  Args:
    answer_logits: [B, C]; answer_targets: [B, C] soft scores in [0, 1].

  Returns:
    (loss, {'vqa_correct': summed soft accuracy, 'vqa_count': B}).
  """
  logits = answer_logits.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, answer_targets.astype(jnp.float32))
  loss = bce.mean() * logits.shape[-1]
  return loss, {'vqa_correct': task_metrics.vqa_scores(logits, answer_targets).sum(),
                'vqa_count': jnp.asarray(logits.shape[0])}


def vqa_loss_per_example(answer_logits: Array, answer_targets: Array) -> Array:
  """Per-question BCE summed over answers: [B, C], [B, C] -> [B]; its mean is `vqa_loss`."""
  bce = optax.sigmoid_binary_cross_entropy(answer_logits.astype(jnp.float32),
                                           answer_targets.astype(jnp.float32))
  return bce.sum(-1)


def classification_loss(class_logits: Array, labels: Array) -> LossAndMetrics:
  """Mean cross-entropy (SNLI-VE, spec §4.3): logits [B, C], int labels [B]."""
  logits = class_logits.astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {'ve_correct': task_metrics.classification_correct(logits, labels).sum(),
                've_count': jnp.asarray(labels.shape[0])}


def referring_loss(region_logits: Array, region_iou: Array,
                   num_groups: int = 1) -> LossAndMetrics:
  """MSE between region cosines and their IoU with the target box, over valid regions (§4.4).

  Args:
    region_logits: [B, R] cosines; region_iou: [B, R] IoU targets, negative (-1) on padding.
    num_groups: per-group means over valid regions, averaged over groups (1 = global mean).

  Returns:
    (loss, {'re_correct': argmax regions with IoU >= 0.5, 're_count': B}). 0 without any valid
    region.
  """
  valid = region_iou >= 0
  error = jnp.where(valid, (region_logits.astype(jnp.float32) - region_iou) ** 2, 0.0)
  loss = losses.grouped_mean(error, valid, num_groups)
  return loss, {'re_correct': task_metrics.referring_correct(region_logits, region_iou).sum(),
                're_count': jnp.asarray(region_iou.shape[0])}
