"""MLM and MCR accuracy (and loss) of the pre-training model on corrupted validation batches.

MLM predicts the corrupted words from the cross-modal text positions, MCR the corrupted tags from
the visual encoder (spec §2.3, §2.6). The batches carry the pipeline's fixed-seed corruption
(`corrupt=True`), so every evaluation scores the same masked positions.

Metrics: mlm_accuracy, mlm_loss, mcr_accuracy, mcr_loss (sums over every target token of the
split, divided by the number of targets).
"""

from typing import Callable, Dict, Mapping

import jax

from mvp_jax import losses
from mvp_jax import model as model_lib
from mvp_jax.evaluators import base

Array = jax.Array


def _per_row(loss_fn: Callable, logits: Array, labels: Array) -> Dict[str, Array]:
  """A batch-mean token loss applied row by row: [B, ...] -> {loss_sum, correct, count} [B]."""
  loss, counts = jax.vmap(lambda l, y: loss_fn(l[None], y[None]))(logits, labels)
  return dict(loss_sum=loss * counts['count'], correct=counts['correct'],
              count=counts['count'])


class TokenAccuracyEvaluator(base.RowEvaluator):
  """`type='token_accuracy'`: MLM / MCR accuracy and loss (pre-training only)."""
  tasks = ('pretrain',)
  corrupt = True

  def rows(self, params, batch: Mapping[str, Array]) -> Dict[str, Array]:
    out = self.context.model.apply({'params': params}, batch)
    values = {}
    # Either head mode: all positions, or the gathered masked ones (`prediction_positions`).
    for name, loss_fn, (logits, labels) in (
        ('mlm', losses.masked_language_loss, model_lib.text_predictions(out, batch)),
        ('mcr', losses.masked_concept_loss, model_lib.concept_predictions(out, batch))):
      values.update({f'{name}_{k}': v for k, v in _per_row(loss_fn, logits, labels).items()})
    return values

  def summarize(self, values) -> Dict[str, float]:
    results = {}
    for name in ('mlm', 'mcr'):
      count = max(float(values[f'{name}_count'].sum()), 1.0)
      results[f'{name}_accuracy'] = float(values[f'{name}_correct'].sum()) / count
      results[f'{name}_loss'] = float(values[f'{name}_loss_sum'].sum()) / count
    return results
