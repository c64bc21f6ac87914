"""Referring-expression evaluation (spec §4.4): accuracy of the argmax valid region at IoU >= 0.5,
the upper bound (expressions with a region at IoU >= 0.5 at all) and chance (hits / #regions)."""

from typing import Dict, Mapping

import jax
import jax.numpy as jnp

from mvp_jax.downstream import metrics as task_metrics
from mvp_jax.evaluators import base

Array = jax.Array


class REEvaluator(base.RowEvaluator):
  """`type='re'`: accuracy, upper_bound, chance, num_expressions."""
  tasks = ('re',)

  def rows(self, params, batch: Mapping[str, Array]) -> Dict[str, Array]:
    logits = self.context.model.apply({'params': params}, batch)['region_logits']
    iou = batch['region_iou']  # [B, R], -1 on padded regions
    valid = iou >= 0
    hits = (iou >= task_metrics.RE_IOU_THRESHOLD) & valid
    return dict(correct=task_metrics.referring_correct(logits, iou),
                reachable=hits.any(-1).astype(jnp.float32),
                chance=hits.sum(-1) / jnp.maximum(valid.sum(-1), 1))

  def summarize(self, values) -> Dict[str, float]:
    return {'accuracy': float(values['correct'].mean()),
            'upper_bound': float(values['reachable'].mean()),
            'chance': float(values['chance'].mean()),
            'num_expressions': float(len(values['correct']))}
