"""Storage of downstream-task datasets: image records plus one task-example file per split.

Layout of a task dataset directory:
  directory/metadata.json               storage metadata, with "task" (storage.py)
  directory/vocab.txt | *.model         tokenizer vocabulary   } shared with pre-training
  directory/id2phrase.json              concept vocabulary     }
  directory/<split>/                    image records (storage.write_dataset)
  directory/<split>.examples.jsonl      the task examples of the split, one JSON object a line
  directory/answers.json                VQA only: the answer vocabulary, label -> answer string
  directory/task.json                   task, label names and the complete splits

A split is complete once `task.json` lists it; that entry is written last (atomically), after the
image records and the example file, so a half-written split never looks complete. Rewriting a
split first removes its entry.

Task example (one line of `<split>.examples.jsonl`):
  example_id      str, unique within the split
  image_id        str, the image record the example reads
  image_index     int, position of that record in the split (set by `write_task_split`)
  text            str, the caption / question / hypothesis / referring expression
  phrases         [[str, ...], ...], phrase tuples of `text` (not used for 're')
  phrase_regions  [int, ...], optional: grounded region of each phrase, -1 unknown (default)
  task fields:
    vqa  question_id int; labels [int] and scores [float]: sparse soft targets over answers.json
    ve   label int: 0 contradiction, 1 neutral, 2 entailment
    re   target_box [x1, y1, x2, y2], float pixels in the image record's coordinates
"""

import collections
import dataclasses
import json
import os
import shutil
import uuid
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from input_pipeline import jsonio
from input_pipeline import storage

TASKS = ('retrieval', 'vqa', 've', 're')
VE_LABELS = ('contradiction', 'neutral', 'entailment')
TASK_FILE = 'task.json'
ANSWERS_FILE = 'answers.json'
EXAMPLES_SUFFIX = '.examples.jsonl'
_COMMON_FIELDS = ('example_id', 'image_id', 'image_index', 'text', 'phrases', 'phrase_regions')
TASK_FIELDS = {'retrieval': (), 'vqa': ('question_id', 'labels', 'scores'), 've': ('label',),
               're': ('target_box',)}


class TaskDataError(ValueError):
  """A task dataset or import input that cannot be used; the message names file and entry."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What `task.json` (and `answers.json`) say about a task dataset.

  Attributes:
    task: one of TASKS.
    splits: split -> {'num_examples', 'num_images'} for every complete split.
    answers: VQA answer strings by label (label2ans), else None.
    label_names: VE class names by label, else None.
  """
  task: str
  splits: Mapping[str, Mapping[str, int]]
  answers: Optional[Sequence[str]] = None
  label_names: Optional[Sequence[str]] = None

  @property
  def num_answers(self) -> int:
    """Size of the VQA answer vocabulary (0 for other tasks)."""
    return len(self.answers) if self.answers is not None else 0

  @property
  def num_labels(self) -> int:
    """Number of VE classes (0 for other tasks)."""
    return len(self.label_names) if self.label_names is not None else 0

  @property
  def ans2label(self) -> dict[str, int]:
    return {a: i for i, a in enumerate(self.answers or ())}


def examples_path(directory: str, split: str) -> str:
  return os.path.join(directory, split + EXAMPLES_SUFFIX)


def load_task_info(directory: str) -> TaskInfo:
  """The task, label names, answer vocabulary and complete splits of a task dataset."""
  path = os.path.join(directory, TASK_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: not a task dataset (no {TASK_FILE}; write a split with '
                            'write_task_split first).')
  info = _read_json(path)
  if not isinstance(info, dict) or info.get('task') not in TASKS:
    raise TaskDataError(f'{path}: expected {{"task": one of {TASKS}, ...}}.')
  answers = load_answers(directory) if info['task'] == 'vqa' else None
  return TaskInfo(task=info['task'], splits=info.get('splits', {}), answers=answers,
                  label_names=tuple(info['label_names']) if info.get('label_names') else None)


def load_answers(directory: str) -> list[str]:
  """The VQA answer vocabulary (answers.json, a list indexed by label)."""
  path = os.path.join(directory, ANSWERS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: the VQA answer vocabulary is missing (write_answers).')
  answers = _read_json(path)
  if (not isinstance(answers, list) or not answers
      or not all(isinstance(a, str) for a in answers) or len(set(answers)) != len(answers)):
    raise TaskDataError(f'{path}: expected a non-empty list of distinct answer strings.')
  return answers


def write_answers(directory: str, answers: Sequence[str]) -> None:
  """Writes answers.json (label -> answer); an existing, different vocabulary is an error."""
  answers = list(answers)
  if not answers or len(set(answers)) != len(answers) or not all(
      isinstance(a, str) and a for a in answers):
    raise TaskDataError(f'{directory}: the answer vocabulary must be distinct non-empty strings.')
  path = os.path.join(directory, ANSWERS_FILE)
  if os.path.exists(path):
    if load_answers(directory) != answers:
      raise TaskDataError(f'{path}: holds another answer vocabulary; splits of one dataset must '
                          'share it (use another directory).')
    return
  os.makedirs(directory, exist_ok=True)
  jsonio.write_json_atomically(answers, path)


def copy_vocabularies(source_dir: str, directory: str) -> None:
  """Copies the tokenizer file and id2phrase.json of `source_dir` beside the task data.

  Files already in `directory` must be byte-identical (a model's embedding table depends on them).
  """
  names = [n for n in sorted(os.listdir(source_dir))
           if n == 'vocab.txt' or n.endswith('.model')] + [storage.CONCEPTS_FILE]
  storage.load_vocabularies(source_dir)  # Fails clearly when the source has no vocabularies.
  os.makedirs(directory, exist_ok=True)
  for name in names:
    src, dst = os.path.join(source_dir, name), os.path.join(directory, name)
    if os.path.abspath(src) == os.path.abspath(dst):
      continue
    if os.path.exists(dst):
      with open(src, 'rb') as a, open(dst, 'rb') as b:
        if a.read() != b.read():
          raise TaskDataError(f'{dst}: differs from {src}; a task dataset keeps the vocabulary '
                              'of the model it fine-tunes (use another directory).')
      continue
    tmp = f'{dst}.tmp-{uuid.uuid4().hex}'
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def validate_example(example: Mapping[str, Any], task: str, where: str,
                     num_answers: int = 0) -> dict[str, Any]:
  """Checks one task example (module docstring) and returns it in stored form.

  `image_index` may be absent (write_task_split sets it). Raises TaskDataError naming `where`.
  """
  def fail(problem):
    raise TaskDataError(f'{where}: {problem}')

  allowed = set(_COMMON_FIELDS) | set(TASK_FIELDS[task])
  required = {'example_id', 'image_id', 'text'} | set(TASK_FIELDS[task])
  missing, unknown = sorted(required - set(example)), sorted(set(example) - allowed)
  if missing or unknown:
    fail(f'{task} example: missing fields {missing}, unknown fields {unknown}.')
  out = {}
  for key in ('example_id', 'image_id', 'text'):
    if not isinstance(example[key], str) or not example[key].strip():
      fail(f'{key} must be a non-empty str, got {example[key]!r:.60}.')
    out[key] = example[key].strip() if key == 'text' else example[key]
  phrases = example.get('phrases', [])
  if not isinstance(phrases, (list, tuple)) or not all(
      isinstance(p, (list, tuple)) and 1 <= len(p) <= 3 and all(isinstance(w, str) and w
                                                                for w in p) for p in phrases):
    fail('phrases must be a list of tuples of 1 to 3 non-empty str.')
  out['phrases'] = [list(p) for p in phrases]
  links = example.get('phrase_regions', [-1] * len(phrases))
  if (not isinstance(links, (list, tuple)) or len(links) != len(phrases)
      or not all(isinstance(r, (int, np.integer)) and r >= -1 for r in links)):
    fail(f'phrase_regions must hold one int >= -1 per phrase ({len(phrases)}).')
  out['phrase_regions'] = [int(r) for r in links]
  if 'image_index' in example:
    out['image_index'] = int(example['image_index'])
  if task == 'vqa':
    qid, labels, scores = example['question_id'], example['labels'], example['scores']
    if not isinstance(qid, (int, np.integer)) or isinstance(qid, bool):
      fail(f'question_id must be an int, got {qid!r}.')
    if (not isinstance(labels, (list, tuple)) or not isinstance(scores, (list, tuple))
        or len(labels) != len(scores)):
      fail('labels and scores must be lists of the same length.')
    if not all(isinstance(l, (int, np.integer)) and 0 <= l < num_answers for l in labels):
      fail(f'labels must be ints in [0, {num_answers}) (answers.json), got {list(labels)}.')
    if len(set(int(l) for l in labels)) != len(labels):
      fail(f'labels repeat an answer: {list(labels)}.')
    if not all(isinstance(s, (int, float)) and 0.0 <= s <= 1.0 for s in scores):
      fail(f'scores must be numbers in [0, 1], got {list(scores)}.')
    out.update(question_id=int(qid), labels=[int(l) for l in labels],
               scores=[float(s) for s in scores])
  elif task == 've':
    label = example['label']
    if not isinstance(label, (int, np.integer)) or not 0 <= label < len(VE_LABELS):
      fail(f'label must be an int in [0, {len(VE_LABELS)}) ({VE_LABELS}), got {label!r}.')
    out['label'] = int(label)
  elif task == 're':
    box = np.asarray(example['target_box'], np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or not (box[2] > box[0]
                                                                   and box[3] > box[1]):
      fail(f'target_box must be finite [x1, y1, x2, y2] with x2 > x1, y2 > y1, got '
           f'{example["target_box"]!r}.')
    out['target_box'] = [float(v) for v in box]
  return out


def write_task_split(directory: str, split: str, *, task: str,
                     records: Iterable[Mapping[str, Any]], examples: Iterable[Mapping[str, Any]],
                     source: str = '', overwrite: bool = False) -> TaskInfo:
  """Writes the image records and task examples of one split; returns the updated TaskInfo.

  Args:
    directory: the task dataset directory (vocabularies and, for VQA, answers.json are written
      separately: `copy_vocabularies`, `write_answers`).
    split: split name.
    task: one of TASKS; must match the dataset's.
    records: image records (features.py), each image once.
    examples: task examples referencing the records by image_id.
    source: recorded in task.json for this split.
    overwrite: replace a complete split.
  """
  _writable_info(directory, split, task, overwrite)
  num_answers = len(load_answers(directory)) if task == 'vqa' else 0
  path = examples_path(directory, split)
  checked = [validate_example(e, task, f'{path}: example {i}', num_answers)
             for i, e in enumerate(examples)]
  _check_ids(checked, path)

  def write_images():
    image_ids = []

    def tracked():
      for record in records:
        image_ids.append(record['image_id'])
        yield record

    # A split folder not listed in task.json is left over from a failed write: replace it.
    storage.write_dataset(tracked(), directory, split, metadata={'task': task}, overwrite=True)
    return image_ids, checked

  return commit_task_split(directory, split, task=task, write_images=write_images,
                           source=source, overwrite=overwrite)


def commit_task_split(directory: str, split: str, *, task: str,
                      write_images: Callable[[], tuple[Sequence[str], Sequence[Mapping]]],
                      source: str = '', overwrite: bool = False) -> TaskInfo:
  """Makes one split of a task dataset complete; the one writer of examples and task.json.

  `write_images()` puts the split's image records in place as `directory/<split>/`
  (storage.write_dataset, or sources/layout.py linking a built task split) and returns (their
  image ids in record order, the split's task examples). The examples are checked, get their
  `image_index` and go to `<split>.examples.jsonl`; task.json lists the split last.
  """
  info = _writable_info(directory, split, task, overwrite)
  info_path = os.path.join(directory, TASK_FILE)
  num_answers = len(load_answers(directory)) if task == 'vqa' else 0
  path = examples_path(directory, split)

  # Un-complete the split before touching it (and fix the dataset's task on its first split).
  info['splits'] = {k: v for k, v in info['splits'].items() if k != split}
  os.makedirs(directory, exist_ok=True)
  jsonio.write_json_atomically(info, info_path)
  image_ids, examples = write_images()
  checked = [validate_example(e, task, f'{path}: example {i}', num_answers)
             for i, e in enumerate(examples)]
  _check_ids(checked, path)
  index = {image_id: i for i, image_id in enumerate(image_ids)}
  for i, example in enumerate(checked):
    if example['image_id'] not in index:
      raise TaskDataError(f'{path}: example {i} ({example["example_id"]!r}) references image '
                          f'{example["image_id"]!r}, which is not among the split\'s records.')
    if example.get('image_index', index[example['image_id']]) != index[example['image_id']]:
      raise TaskDataError(f'{path}: example {i} has image_index {example["image_index"]}, but '
                          f'image {example["image_id"]!r} is record {index[example["image_id"]]}.')
    example['image_index'] = index[example['image_id']]
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with open(tmp, 'w', encoding='utf-8') as f:
    for example in checked:
      f.write(json.dumps(example, separators=(',', ':')) + '\n')
  os.replace(tmp, path)
  info['splits'] = {**info['splits'], split: {'num_examples': len(checked),
                                              'num_images': len(image_ids), 'source': source}}
  jsonio.write_json_atomically(info, info_path)
  return load_task_info(directory)


def _writable_info(directory: str, split: str, task: str, overwrite: bool) -> dict:
  """task.json's content (a new one for a new dataset), checked for writing `split` of `task`."""
  if task not in TASKS:
    raise ValueError(f'Unknown task {task!r}; expected one of {TASKS}.')
  info_path = os.path.join(directory, TASK_FILE)
  info = _read_json(info_path) if os.path.exists(info_path) else {
      'task': task, 'splits': {}, 'label_names': list(VE_LABELS) if task == 've' else None}
  if info.get('task') != task:
    raise TaskDataError(f'{info_path}: the dataset is a {info.get("task")!r} dataset, not '
                        f'{task!r}.')
  if split in info['splits'] and not overwrite:
    raise FileExistsError(f'{directory}/{split}: split already written (pass overwrite=True).')
  return info


def _check_ids(examples: Sequence[Mapping[str, Any]], path: str) -> None:
  if not examples:
    raise TaskDataError(f'{path}: no examples to write.')
  counts = collections.Counter(e['example_id'] for e in examples)
  duplicates = [k for k, c in counts.items() if c > 1]
  if duplicates:
    raise TaskDataError(f'{path}: duplicate example_id {duplicates[:5]}.')


def read_examples(directory: str, split: str) -> tuple[TaskInfo, list[dict[str, Any]]]:
  """(TaskInfo, the split's examples in stored order) of a complete split."""
  info = load_task_info(directory)
  if split not in info.splits:
    raise TaskDataError(f'{directory}: split {split!r} is not complete (task.json lists '
                        f'{sorted(info.splits)}).')
  path = examples_path(directory, split)
  examples = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      try:
        example = json.loads(line)
      except json.JSONDecodeError as e:
        raise TaskDataError(f'{path}:{line_no}: not JSON ({e}).') from None
      examples.append(validate_example(example, info.task, f'{path}:{line_no}',
                                       info.num_answers))
  expected = info.splits[split]['num_examples']
  if len(examples) != expected:
    raise TaskDataError(f'{path}: {len(examples)} examples, task.json says {expected}.')
  return info, examples


def vqa_soft_scores(answers: Iterable[str]) -> dict[str, float]:
  """VQA soft score of each distinct answer: min(1, annotators who gave it / 3)."""
  counts = collections.Counter(answers)
  return {a: min(1.0, c / 3.0) for a, c in counts.items()}


def _read_json(path: str) -> Any:
  return jsonio.read_json(path, TaskDataError)
