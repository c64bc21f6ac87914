"""Imports VQA (v2 or VinVL's qla form) as a 'vqa' task split (input_pipeline/tasks/examples.py).

  python -m input_pipeline.tasks.vqa --questions=v2_OpenEnded_mscoco_train2014_questions.json \\
      --annotations=v2_mscoco_train2014_annotations.json --images=data/coco_vinvl:train \\
      --out_dir=data/vqa --split=train --answer_vocab=trainval_ans2label.pkl
  python -m input_pipeline.tasks.vqa --qla=val2014_qla_mrcnn.json --images=data/coco_vinvl:val \\
      --out_dir=data/vqa --split=val

Inputs:
  VQA v2     questions `{"questions": [{"question_id", "image_id", "question"}]}` and, except for
             test, annotations `{"annotations": [{"question_id", "multiple_choice_answer",
             "answers": [{"answer"}, ...]}]}`. Soft score of an answer = min(1, annotators who
             gave it / 3); answers are compared lower-cased with whitespace collapsed.
  VinVL qla  `[{"q"|"question", "img_id"|"img_key"|"image_id", "q_id"|"question_id",
             "an"|"labels", "s"|"scores", "answer_type", ...}]`; labels are answer-vocabulary
             indices (or answer strings), scores their soft scores.
Answer vocabulary (answers.json, label -> answer): `--answer_vocab` (a `trainval_ans2label.pkl`
style {answer: label} dict, or a label2ans list; pickle or JSON), else the dataset's existing
answers.json, else built from this split: answers that are the `multiple_choice_answer` (the best
answer) of at least `min_answer_count` questions, by decreasing count.
Region features come from image-record datasets (`--images=DIR:SPLIT`, searched in order),
joined by image id normalised as the authors' str(int(id.split('_')[-1])). Questions whose image
is missing are reported (file and index) and left out; questions without an in-vocabulary answer
are skipped in training splits as the authors do (`--keep_unanswered` keeps them) and counted.
Phrases come from the built-in extractor (phrase_extractor.py) unless `--nobuiltin_phrases`.
Flags shared with the other importers: input_pipeline/cli.py (define_importer_flags).
"""

import collections
import json
import os
import pickle
import sys
from typing import Any, Optional, Sequence

from absl import flags

from input_pipeline import cli
from input_pipeline import ownership
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing

Candidate = importing.Candidate
TaskDataError = examples_lib.TaskDataError


def normalize_answer(answer: str) -> str:
  return ' '.join(str(answer).lower().split())


def load_answer_vocab(path: str) -> list[str]:
  """label2ans from a {answer: label} dict (trainval_ans2label.pkl) or a [answer] list."""
  try:
    if path.endswith(('.pkl', '.pickle')):
      with open(path, 'rb') as f:
        data = pickle.load(f)  # Runs code from the file: trusted files only.
    else:
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
  except (OSError, pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TaskDataError(f'{path}: cannot read the answer vocabulary ({e}).') from None
  if isinstance(data, dict):
    labels = sorted(data.values()) if all(isinstance(v, int) for v in data.values()) else None
    if labels != list(range(len(data))):
      raise TaskDataError(f'{path}: an ans2label dict must map answers to labels 0..N-1.')
    answers = [None] * len(data)
    for answer, label in data.items():
      answers[label] = str(answer)
  elif isinstance(data, list) and all(isinstance(a, str) for a in data):
    answers = list(data)
  else:
    raise TaskDataError(f'{path}: expected an {{answer: label}} dict or a list of answers.')
  if len(set(answers)) != len(answers) or not all(answers):
    raise TaskDataError(f'{path}: answers must be distinct and non-empty.')
  return answers


def read_vqa_v2(questions_path: str, annotations_path: Optional[str],
                report: importing.ImportReport) -> list[dict[str, Any]]:
  """[{question_id, image_id, question, answers: [str] or None, best: str or None, where}]."""
  questions = _load_json(questions_path)
  if not isinstance(questions, dict) or not isinstance(questions.get('questions'), list):
    raise TaskDataError(f'{questions_path}: expected {{"questions": [...]}}.')
  annotations = {}
  if annotations_path:
    data = _load_json(annotations_path)
    if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
      raise TaskDataError(f'{annotations_path}: expected {{"annotations": [...]}}.')
    for i, a in enumerate(data['annotations']):
      where = f'{annotations_path}: annotations[{i}]'
      if (not isinstance(a, dict) or not isinstance(a.get('answers'), list)
          or 'question_id' not in a or not all(isinstance(x, dict) and 'answer' in x
                                               for x in a['answers'])):
        report.problem('bad_annotation', where, 'expected {"question_id", "answers": '
                       '[{"answer"}, ...]}')
        continue
      annotations[a['question_id']] = a
  entries = []
  for i, q in enumerate(questions['questions']):
    where = f'{questions_path}: questions[{i}]'
    report.stats['examples_read'] += 1
    if (not isinstance(q, dict) or not isinstance(q.get('question'), str)
        or not isinstance(q.get('question_id'), int) or 'image_id' not in q):
      report.problem('bad_question', where, 'expected {"question_id": int, "image_id", '
                     '"question": str}')
      continue
    entry = {'question_id': q['question_id'], 'image_id': q['image_id'],
             'question': q['question'], 'answers': None, 'best': None, 'where': where}
    if annotations_path:
      a = annotations.get(q['question_id'])
      if a is None:
        report.problem('missing_annotation', where, f'no annotation for question_id '
                       f'{q["question_id"]} in {annotations_path}')
        continue
      entry['answers'] = [normalize_answer(x['answer']) for x in a['answers']]
      best = a.get('multiple_choice_answer')
      entry['best'] = normalize_answer(best) if isinstance(best, str) else (
          collections.Counter(entry['answers']).most_common(1)[0][0] if entry['answers'] else None)
    entries.append(entry)
  return entries


def read_qla(path: str, report: importing.ImportReport) -> list[dict[str, Any]]:
  """[{question_id, image_id, question, labels: [int | str], scores: [float], where}]."""
  data = _load_json(path)
  if not isinstance(data, list):
    raise TaskDataError(f'{path}: expected a list of qla entries.')
  entries = []
  for i, q in enumerate(data):
    where = f'{path}: [{i}]'
    report.stats['examples_read'] += 1
    entry = None
    if isinstance(q, dict):
      get = lambda *keys, q=q: next((q[k] for k in keys if k in q), None)
      entry = {'question': get('q', 'question'), 'image_id': get('img_id', 'img_key', 'image_id'),
               'question_id': get('q_id', 'question_id'), 'labels': get('an', 'labels') or [],
               'scores': get('s', 'scores') or [], 'where': where}
    if (entry is None or not isinstance(entry['question'], str) or entry['image_id'] is None
        or not isinstance(entry['labels'], list) or not isinstance(entry['scores'], list)
        or len(entry['labels']) != len(entry['scores'])):
      report.problem('bad_question', where, 'expected {"q", "img_id", "q_id", "an": [...], '
                     '"s": [...]} with as many scores as labels')
      continue
    try:
      entry['question_id'] = int(entry['question_id'] if entry['question_id'] is not None else i)
    except (TypeError, ValueError):
      report.problem('bad_question', where, f'question id {entry["question_id"]!r} is not an int')
      continue
    entries.append(entry)
  return entries


def build_answer_vocab(entries: Sequence[dict[str, Any]], min_count: int) -> list[str]:
  """Answers that are the best answer of >= min_count questions, by count then answer."""
  counts = collections.Counter(e['best'] for e in entries if e.get('best'))
  answers = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
  if not answers:
    raise TaskDataError(f'no answer is the best answer of {min_count} questions; lower '
                        'min_answer_count or pass an answer vocabulary.')
  return answers


def read_candidates(files: dict, answers: Sequence[str], report: importing.ImportReport, *,
                    split: str, normalize_ids: bool = True, builtin_phrases: bool = True,
                    keep_unanswered: Optional[bool] = None) -> list[Candidate]:
  """The 'vqa' examples of one split's `files` {'questions', 'annotations', 'qla'}.

  keep_unanswered: keep questions without an in-vocabulary answer (all-zero targets); default
    False for splits whose name starts with 'train', else True.
  """
  qla = files.get('qla')
  if qla is not None:
    entries = read_qla(qla, report)
  else:
    entries = read_vqa_v2(files['questions'], files.get('annotations'), report)
  if keep_unanswered is None:
    keep_unanswered = not split.startswith('train')
  ans2label = {a: i for i, a in enumerate(answers)}
  candidates = []
  for entry in entries:
    try:
      image_id = importing.normalize_image_id(entry['image_id'], normalize_ids)
    except TaskDataError as e:
      report.problem('bad_image_id', entry['where'], str(e))
      continue
    if qla is not None:
      targets = _qla_targets(entry, answers, ans2label, report)
      if targets is None:
        continue
    else:
      scores = examples_lib.vqa_soft_scores(entry['answers'] or [])
      targets = {ans2label[a]: s for a, s in scores.items() if a in ans2label}
    if not targets and not keep_unanswered:
      report.stats['unanswered_skipped'] += 1
      report.stats['examples_read'] -= 1  # A deliberate skip, not a loss.
      continue
    labels = sorted(targets)
    candidates.append(Candidate(example={
        'example_id': str(entry['question_id']), 'image_id': image_id,
        'text': entry['question'], 'question_id': entry['question_id'],
        'phrases': importing.phrases_or_extracted(None, '', entry['question'],
                                                     builtin_phrases),
        'labels': labels, 'scores': [targets[l] for l in labels]}, where=entry['where']))
  return candidates


def import_vqa(*, out_dir: str, split: str, image_sources: Sequence[tuple[str, str]],
               questions: Optional[str] = None, annotations: Optional[str] = None,
               qla: Optional[str] = None, answer_vocab: Optional[str] = None,
               min_answer_count: int = 9, vocab_dir: Optional[str] = None,
               normalize_ids: bool = True, builtin_phrases: bool = True,
               keep_unanswered: Optional[bool] = None, on_error: str = 'skip',
               max_error_fraction: float = 0.01,
               overwrite: bool = False) -> examples_lib.TaskInfo:
  """Imports one VQA split into `out_dir` through the `vqa_task` builder
  (sources/import_builders.py; see the module docstring); returns the TaskInfo.

  keep_unanswered: see `read_candidates`.
  vocab_dir: where vocab.txt / id2phrase.json come from (default: the first image source).
  """
  from input_pipeline.sources import import_builders  # pylint: disable=g-import-not-at-top
  if (questions is None) == (qla is None):
    raise ValueError('pass either questions (+ annotations) or qla.')
  ownership.claim(out_dir, 'task')
  existing = os.path.join(out_dir, examples_lib.ANSWERS_FILE)
  if not answer_vocab and os.path.exists(existing):
    answer_vocab = existing
  return import_builders.import_task_split(
      import_builders.VqaTask, out_dir, split, overwrite=overwrite,
      config='vinvl_qla' if qla else 'v2', images=image_sources, vocab_dir=vocab_dir,
      questions=questions, annotations=annotations, qla=qla, answer_vocab=answer_vocab,
      min_answer_count=min_answer_count, normalize_ids=normalize_ids,
      builtin_phrases=builtin_phrases, keep_unanswered=keep_unanswered, on_error=on_error,
      max_error_fraction=max_error_fraction)


def _qla_targets(entry, answers, ans2label, report) -> Optional[dict[int, float]]:
  targets = {}
  for label, score in zip(entry['labels'], entry['scores']):
    if isinstance(label, str):
      label = ans2label.get(normalize_answer(label))
    if (not isinstance(label, int) or not 0 <= label < len(answers)
        or not isinstance(score, (int, float)) or not 0 <= score <= 1):
      report.problem('bad_label', entry['where'], f'label {label!r} with score {score!r} is not '
                     f'an answer index in [0, {len(answers)}) with a score in [0, 1]')
      return None
    targets[label] = max(float(score), targets.get(label, 0.0))
  return targets


def _load_json(path: str) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise TaskDataError(f'{path}: cannot read JSON ({e}).') from None


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('questions', None, 'VQA v2 questions file (v2_OpenEnded_mscoco_*_questions.json)', flag_values=v)
  flags.DEFINE_string('annotations', None, 'VQA v2 answers file (v2_mscoco_*_annotations.json)', flag_values=v)
  flags.DEFINE_string('qla', None, 'VinVL *_qla_mrcnn.json (instead of questions)',
                      flag_values=v)
  flags.DEFINE_string('answer_vocab', None, 'trainval_ans2label.pkl or a JSON list/dict',
                      flag_values=v)
  flags.DEFINE_integer('min_answer_count', 9, 'answers kept when building the vocabulary',
                       flag_values=v)
  flags.DEFINE_bool('builtin_phrases', True, 'phrases from the built-in extractor',
                    flag_values=v)
  flags.DEFINE_enum('keep_unanswered', 'auto', ['auto', 'true', 'false'], 'keep questions '
                    'without an in-vocabulary answer (auto: not in train splits)', flag_values=v)


def _import(a: flags.FlagValues) -> examples_lib.TaskInfo:
  keep = {'auto': None, 'true': True, 'false': False}[a.keep_unanswered]
  return import_vqa(questions=a.questions, annotations=a.annotations, qla=a.qla,
                    answer_vocab=a.answer_vocab, min_answer_count=a.min_answer_count,
                    builtin_phrases=a.builtin_phrases, keep_unanswered=keep,
                    **cli.importer_args(a))


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_importer('python -m input_pipeline.tasks.vqa', argv, _define, _import)


if __name__ == '__main__':
  sys.exit(main())
