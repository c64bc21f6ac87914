"""`from_config(config.evals, EvalContext(...))` of the CONTRACTS.md evaluators interface, on
today's evaluator classes (`mvp_jax/evaluators/`).

The evals helper's `mvp_jax.evaluators.from_config` / `EvalContext` replace this module at the
merge (the trainer then imports `mvp_jax.evaluators`). Metric names are today's: pre-training
`retrieval/...` and `{split}/mlm_accuracy`, `{split}/grounding_accuracy`; tasks
`{split}/{task}/...`.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn

from mvp_jax.evaluators import pretraining as pretraining_eval
from mvp_jax.evaluators import retrieval as retrieval_eval
from mvp_jax.evaluators import tasks as task_eval

TYPES = ('retrieval', 'token_accuracy', 'grounding', 'vqa', 've', 're')


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator may use: the model, the task, cached host batches, their placement."""
  model: nn.Module
  task: str
  batches: Callable[[str, bool], List[Mapping[str, Any]]]  # (split, corrupt) -> host batches
  to_device: Callable[[Mapping[str, Any]], Mapping[str, Any]]
  workdir: str
  answers: Optional[Sequence[str]] = None


@dataclasses.dataclass
class Evaluator:
  """`run(params)` yields (metric name, value); `every` steps (0: only at the end)."""
  name: str
  every: int
  split: str
  _run: Callable[[Any], Dict[str, float]]

  def run(self, params) -> Iterator[Tuple[str, float]]:
    yield from self._run(params).items()


def _build(kind: str, options: Dict[str, Any], split: str,
           context: EvalContext) -> Callable[[Any], Dict[str, float]]:
  """The `run(params) -> {name: value}` of one evaluator; pops the options it uses."""
  model, to_device, task = context.model, context.to_device, context.task
  clean = lambda: context.batches(split, False)
  if kind == 'retrieval':
    pretraining = task == 'pretrain'
    return retrieval_eval.TwoStageRetrievalEvaluator(
        model, clean, to_device,
        match_probability=(retrieval_eval.pretraining_match_probability if pretraining
                           else retrieval_eval.finetuned_match_probability),
        top_k_images=options.pop('top_k_images', 64), top_k_texts=options.pop('top_k_texts', 128),
        add_contrastive=options.pop('add_contrastive', False),
        score_batch_size=options.pop('score_batch_size', 64),
        prefix='retrieval' if pretraining else f'{split}/retrieval').run
  if kind == 'token_accuracy':
    return pretraining_eval.TokenAccuracyEvaluator(model, lambda: context.batches(split, True),
                                                   to_device, prefix=split).run
  if kind == 'grounding':
    return pretraining_eval.GroundingEvaluator(model, clean, to_device, prefix=split).run
  if kind == 'vqa':
    path = (os.path.join(context.workdir, f'vqa_predictions_{split}.json')
            if options.pop('predictions', False) else None)
    score = options.pop('score', True)
    evaluator = task_eval.VQAEvaluator(model, clean, to_device, answers=context.answers or (),
                                       predictions_path=path, prefix=f'{split}/vqa')
    if score:
      return evaluator.run
    # A split without answers (VQA v2 test): only the predictions file and the question count.
    return lambda params: {k: v for k, v in evaluator.run(params).items()
                           if k.endswith('/num_questions')}
  if kind == 've':
    return task_eval.VEEvaluator(model, clean, to_device, prefix=f'{split}/ve').run
  return task_eval.REEvaluator(model, clean, to_device, prefix=f'{split}/re').run


def from_config(evals_config: Mapping[str, Mapping[str, Any]],
                context: EvalContext) -> List[Evaluator]:
  """One Evaluator per entry `name: dict(type=..., split=..., every=..., **options)`."""
  evaluators = []
  for name, entry in (evals_config or {}).items():
    options = dict(entry)
    kind = options.pop('type', None)
    if kind not in TYPES:
      raise ValueError(f'config.evals.{name}: type {kind!r} is not one of {list(TYPES)}.')
    split = options.pop('split', 'val')
    every = int(options.pop('every', 0))
    run = _build(kind, options, split, context)
    if options:
      raise ValueError(f'config.evals.{name}: unknown options {sorted(options)} for a {kind!r} '
                       f'evaluator.')
    evaluators.append(Evaluator(name, every, split, run))
  return evaluators
