"""Evaluators of the VQA, SNLI-VE and referring-expression models (spec §4.2–§4.4).

All share `run(params) -> {name: float}` with the pre-training evaluators. Batches are host-local
numpy dicts (`input_pipeline/tasks` contract); rows with `example_valid` 0 pad the last batch and
are dropped before anything is summed. `VQAEvaluator` also writes the EvalAI predictions file,
`[{"question_id": int, "answer": str}, ...]`.
"""

import json
import os
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream import metrics as task_metrics
from mvp_jax.evaluators.retrieval import to_host

Batch = Mapping[str, np.ndarray]


def host_rows(x: np.ndarray) -> np.ndarray:
  """A host-local numpy column gathered over hosts in the global row order."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))
  return np.asarray(x)


class _TaskEvaluator:
  """Runs a jitted per-row function over the batches and sums its valid rows."""

  host_keys: Sequence[str] = ()  # host-side batch columns to keep (not sent to the device)

  def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Batch]],
               to_device: Callable[[Batch], Batch], prefix: str,
               rows: Callable[[object, Batch], Dict[str, jax.Array]]):
    """`rows(params, batch)` gives per-row values [B] of one batch; it is jitted here."""
    self.model, self.batches, self.to_device, self.prefix = model, batches, to_device, prefix
    self._rows = jax.jit(rows)

  def collect(self, params) -> Dict[str, np.ndarray]:
    """Every per-row value over the split, valid rows only, plus `example_index`."""
    columns: Dict[str, list] = {}
    for batch in self.batches():
      out = {k: to_host(v) for k, v in self._rows(params, self.to_device(batch)).items()}
      out['example_index'] = host_rows(batch['example_index'])
      for key in self.host_keys:
        out[key] = host_rows(batch[key])
      valid = host_rows(batch['example_valid']).astype(bool)
      for key, value in out.items():
        columns.setdefault(key, []).append(value[valid])
    if not columns:
      raise ValueError(f'{self.prefix}: the evaluation split yielded no batch.')
    return {k: np.concatenate(v) for k, v in columns.items()}


class VQAEvaluator(_TaskEvaluator):
  """Soft-score VQA accuracy sum(onehot(argmax) · target) / N and the BCE loss; EvalAI file.

  Args:
    answers: the answer vocabulary (label -> answer string) for the predictions file.
    predictions_path: where process 0 writes `[{question_id, answer}]` (None: not written).
  """
  host_keys = ('question_id',)

  def __init__(self, model, batches, to_device, *, answers: Sequence[str],
               predictions_path: Optional[str] = None, prefix: str = 'vqa'):
    self.answers, self.predictions_path = list(answers), predictions_path

    def rows(params, batch):
      logits = model.apply({'params': params}, batch)['answer_logits']
      targets = batch['answer_targets']
      return dict(score=task_metrics.vqa_scores(logits, targets),
                  loss=task_losses.vqa_loss_per_example(logits, targets),
                  prediction=logits.argmax(-1))

    super().__init__(model, batches, to_device, prefix, rows)

  def run(self, params) -> Dict[str, float]:
    values = self.collect(params)
    if self.predictions_path and jax.process_index() == 0:
      self.write_predictions(values['question_id'], values['prediction'])
    count = max(len(values['score']), 1)
    return {f'{self.prefix}/accuracy': float(values['score'].sum() / count),
            f'{self.prefix}/loss': float(values['loss'].sum() / count),
            f'{self.prefix}/num_questions': float(len(values['score']))}

  def write_predictions(self, question_ids: np.ndarray, predictions: np.ndarray) -> None:
    """EvalAI format: a JSON list of {"question_id": int, "answer": str}."""
    directory = os.path.dirname(self.predictions_path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    records = [{'question_id': int(q), 'answer': self.answers[int(p)]}
               for q, p in zip(question_ids, predictions)]
    with open(self.predictions_path, 'w', encoding='utf-8') as f:
      json.dump(records, f)


class VEEvaluator(_TaskEvaluator):
  """SNLI-VE accuracy (and per-class accuracy: contradiction 0, neutral 1, entailment 2)."""

  CLASS_NAMES = ('contradiction', 'neutral', 'entailment')

  def __init__(self, model, batches, to_device, prefix: str = 've'):

    def rows(params, batch):
      logits = model.apply({'params': params}, batch)['class_logits']
      return dict(correct=task_metrics.classification_correct(logits, batch['label']),
                  label=batch['label'])

    super().__init__(model, batches, to_device, prefix, rows)

  def run(self, params) -> Dict[str, float]:
    values = self.collect(params)
    results = {f'{self.prefix}/accuracy': float(values['correct'].mean()),
               f'{self.prefix}/num_examples': float(len(values['correct']))}
    for label, name in enumerate(self.CLASS_NAMES):
      chosen = values['label'] == label
      if chosen.any():
        results[f'{self.prefix}/accuracy_{name}'] = float(values['correct'][chosen].mean())
    return results


class REEvaluator(_TaskEvaluator):
  """Referring expressions: accuracy of the argmax valid region at IoU >= 0.5, and the upper
  bound (expressions with at least one region at IoU >= 0.5) and chance (1/#regions)."""

  def __init__(self, model, batches, to_device, prefix: str = 're'):

    def rows(params, batch):
      logits = model.apply({'params': params}, batch)['region_logits']
      iou = batch['region_iou']
      valid = iou >= 0
      hits = (iou >= task_metrics.RE_IOU_THRESHOLD) & valid
      return dict(correct=task_metrics.referring_correct(logits, iou),
                  reachable=hits.any(-1).astype(jnp.float32),
                  chance=hits.sum(-1) / jnp.maximum(valid.sum(-1), 1))

    super().__init__(model, batches, to_device, prefix, rows)

  def run(self, params) -> Dict[str, float]:
    values = self.collect(params)
    return {f'{self.prefix}/accuracy': float(values['correct'].mean()),
            f'{self.prefix}/upper_bound': float(values['reachable'].mean()),
            f'{self.prefix}/chance': float(values['chance'].mean()),
            f'{self.prefix}/num_expressions': float(len(values['correct']))}
