"""SNLI-VE evaluation (spec §4.3): accuracy, and accuracy per gold class."""

from typing import Dict, Mapping

import jax

from mvp_jax.downstream import metrics as task_metrics
from mvp_jax.evaluators import base

Array = jax.Array
CLASS_NAMES = ('contradiction', 'neutral', 'entailment')  # labels 0, 1, 2


class VEEvaluator(base.RowEvaluator):
  """`type='ve'`: accuracy, num_examples and accuracy_{class} for each class present."""
  tasks = ('ve',)

  def rows(self, params, batch: Mapping[str, Array]) -> Dict[str, Array]:
    logits = self.context.model.apply({'params': params}, batch)['class_logits']
    return dict(correct=task_metrics.classification_correct(logits, batch['label']),
                label=batch['label'])

  def summarize(self, values) -> Dict[str, float]:
    correct = values['correct']
    results = {'accuracy': float(correct.mean()), 'num_examples': float(len(correct))}
    for label, name in enumerate(CLASS_NAMES):
      chosen = values['label'] == label
      if chosen.any():
        results[f'accuracy_{name}'] = float(correct[chosen].mean())
    return results
