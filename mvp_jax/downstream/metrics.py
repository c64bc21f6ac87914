"""Per-example scores of the downstream tasks (spec §4); accuracies are their mean over N.

All return [B] arrays so evaluators can drop the padding rows of a last batch before summing.
Shapes: B batch, C answers / classes, R regions.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

RE_IOU_THRESHOLD = 0.5


def vqa_scores(answer_logits: Array, answer_targets: Array) -> Array:
  """onehot(argmax logits) · soft target: [B, C], [B, C] -> [B] (VQA accuracy = sum / N)."""
  predicted = jnp.argmax(answer_logits, axis=-1)
  return jnp.take_along_axis(answer_targets.astype(jnp.float32), predicted[:, None], -1)[:, 0]


def classification_correct(class_logits: Array, labels: Array) -> Array:
  """argmax == label: [B, C], [B] -> [B] float (SNLI-VE accuracy = mean)."""
  return (jnp.argmax(class_logits, axis=-1) == labels).astype(jnp.float32)


def referring_prediction(region_logits: Array, region_iou: Array) -> Array:
  """Index of the highest-scoring valid region (IoU >= 0; padding is -1): [B, R] -> [B]."""
  return jnp.argmax(jnp.where(region_iou >= 0, region_logits, -jnp.inf), axis=-1)


def referring_correct(region_logits: Array, region_iou: Array,
                      threshold: float = RE_IOU_THRESHOLD) -> Array:
  """1 where the argmax valid region has IoU >= threshold with the target box: [B] float."""
  predicted = referring_prediction(region_logits, region_iou)
  iou = jnp.take_along_axis(region_iou, predicted[:, None], axis=-1)[:, 0]
  return (iou >= threshold).astype(jnp.float32)
