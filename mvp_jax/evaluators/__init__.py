"""Evaluators built from the config: `from_config(config.evals, context) -> list[Evaluator]`.

  config.evals = {
      'retrieval': dict(type='retrieval', split='val', every=1000, top_k_images=64),
      'vqa_test': dict(type='vqa', split='test', score=False, predictions=True),
  }
  context = evaluators.EvalContext(model=model, task='vqa', batches=batches,
                                   to_device=to_device, workdir=workdir, answers=answers)
  for evaluator in evaluators.from_config(config.evals, context):
    for name, value in evaluator.run(params):  # params unboxed, under the mesh context
      ...

Every entry takes `type`, `split`, `every` (steps between runs, 0 = only at the end; default 0)
and `prefix` (metric names are `{prefix}/{metric}`, default prefix `{split}/{name}`), plus the
options of its type:
  retrieval       top_k_images, top_k_texts, add_contrastive, score_batch_size, ks
                  (tasks 'pretrain', 'retrieval'; clean batches)
  token_accuracy  -  (task 'pretrain'; corrupted batches)
  grounding       -  (task 'pretrain'; clean batches)
  vqa             predictions, score (task 'vqa')
  ve              -  (task 've')
  re              -  (task 're')
"""

import inspect
from typing import Any, Dict, List, Mapping

from mvp_jax.evaluators import base
from mvp_jax.evaluators import entailment
from mvp_jax.evaluators import grounding
from mvp_jax.evaluators import referring
from mvp_jax.evaluators import retrieval
from mvp_jax.evaluators import token_accuracy
from mvp_jax.evaluators import vqa

EvalContext = base.EvalContext
Evaluator = base.Evaluator

TYPES = {
    'retrieval': retrieval.RetrievalEvaluator,
    'token_accuracy': token_accuracy.TokenAccuracyEvaluator,
    'grounding': grounding.GroundingEvaluator,
    'vqa': vqa.VQAEvaluator,
    've': entailment.VEEvaluator,
    're': referring.REEvaluator,
}
COMMON_OPTIONS = ('split', 'every', 'prefix')


def _options(cls) -> List[str]:
  """The keyword options of an evaluator type besides the common ones."""
  names = []
  for klass in cls.__mro__:
    if '__init__' in vars(klass):
      names += [p.name for p in inspect.signature(klass.__init__).parameters.values()
                if p.kind == p.KEYWORD_ONLY]
  return [n for n in dict.fromkeys(names) if n not in COMMON_OPTIONS]


def from_config(evals: Mapping[str, Mapping[str, Any]], context: EvalContext
                ) -> List[Evaluator]:
  """One evaluator per entry of `evals` ({name: dict(type=..., split=..., **options)}), in order.

  Raises:
    ValueError: naming the entry, for an unknown type, a missing split, an unknown option, or a
      type that does not evaluate `context.task`.
  """
  if context.task not in base.TASKS:
    raise ValueError(f'EvalContext.task must be one of {base.TASKS}, got {context.task!r}.')
  out = []
  for name, entry in evals.items():
    options: Dict[str, Any] = dict(entry)
    kind = options.pop('type', None)
    if kind not in TYPES:
      raise ValueError(f'evals.{name}: type {kind!r} is not one of {sorted(TYPES)}.')
    if not options.get('split'):
      raise ValueError(f'evals.{name}: no split given (e.g. split=\'val\').')
    allowed = _options(TYPES[kind])
    unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(allowed))
    if unknown:
      raise ValueError(f'evals.{name}: unknown option(s) {unknown} for type {kind!r}; its '
                       f'options are {list(COMMON_OPTIONS) + allowed}.')
    out.append(TYPES[kind](name, context, **options))
  return out
