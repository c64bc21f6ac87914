"""VQA evaluation (spec §4.2): soft-score accuracy, BCE loss and the EvalAI predictions file.

accuracy = sum(onehot(argmax logits) · soft target) / N; loss = mean per-question BCE summed over
answers. With `predictions=True` process 0 writes `{workdir}/vqa_predictions_{split}.json`, the
EvalAI format `[{"question_id": int, "answer": str}, ...]`. A split without answers (VQA v2
test) sets `score=False`: only the predictions and `num_questions` are produced, never an
accuracy computed against empty targets.
"""

import json
from typing import Dict, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream import metrics as task_metrics
from mvp_jax.evaluators import base

Array = jax.Array


def write_predictions(path: epath.Path, question_ids: np.ndarray, labels: np.ndarray,
                      answers: Sequence[str]) -> None:
  """Writes the EvalAI list `[{"question_id", "answer"}]` atomically (temporary file + rename)."""
  records = [{'question_id': int(q), 'answer': answers[int(p)]}
             for q, p in zip(question_ids, labels)]
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.parent / f'{path.name}.tmp'
  temporary.write_text(json.dumps(records))
  temporary.replace(path)


class VQAEvaluator(base.RowEvaluator):
  """`type='vqa'`; options `predictions` (write the EvalAI file) and `score` (the split has
  answers: report accuracy and loss)."""
  tasks = ('vqa',)
  host_keys = ('question_id',)

  def __init__(self, name, context, *, predictions: bool = False, score: bool = True, **kwargs):
    super().__init__(name, context, **kwargs)
    if not (predictions or score):
      raise ValueError(f'evals.{name}: score=False and predictions=False leave nothing to do.')
    if predictions and not context.answers:
      raise ValueError(f'evals.{name}: predictions=True needs the answer vocabulary '
                       f'(EvalContext.answers).')
    self.predictions, self.score = bool(predictions), bool(score)
    self.predictions_path = epath.Path(context.workdir) / f'vqa_predictions_{self.split}.json'

  def rows(self, params, batch: Mapping[str, Array]) -> Dict[str, Array]:
    logits = self.context.model.apply({'params': params}, batch)['answer_logits']
    values = dict(prediction=logits.argmax(-1))
    if self.score:
      targets = batch['answer_targets']
      values.update(score=task_metrics.vqa_scores(logits, targets),
                    loss=task_losses.vqa_loss_per_example(logits, targets))
    return values

  def summarize(self, values) -> Dict[str, float]:
    count = len(values['prediction'])
    if self.predictions and jax.process_index() == 0:
      write_predictions(self.predictions_path, values['question_id'], values['prediction'],
                        self.context.answers)
      logging.info('%s: wrote %d predictions to %s', self.name, count, self.predictions_path)
    results = {}
    if self.score:
      results.update(accuracy=float(values['score'].sum()) / max(count, 1),
                     loss=float(values['loss'].sum()) / max(count, 1))
    results['num_questions'] = float(count)
    return results
