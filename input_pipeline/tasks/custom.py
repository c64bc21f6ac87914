"""Builds a task dataset from hand-written JSON lines and plain images or precomputed features.

  python -m input_pipeline.tasks.custom --task=ve --train=train.jsonl --val=val.jsonl \\
      --image_root=DIR --out_dir=DIR [--feature_dim=134 | --pixels] [--vocab=vocab.txt]

Format: one JSON object per line, one task example per line. Paths are relative to
`--image_root` (default: the folder of the JSON-lines file).
  Text:     "text" (retrieval caption, VE hypothesis, RE expression; VQA may say "question").
  Image, one of:
    "image": "a.png"       a PNG/JPEG. Region features come from
                           `region_features.extract_region_features` on "boxes"
                           ([[x1, y1, x2, y2], ...] pixels) when given, else on
                           `grid_boxes(h, w, --grid)`: the grid cells and the whole image.
                           `--pixels` (config.data.pixels) keeps the image and these boxes for
                           the vision tower and runs no extractor (tasks/custom_images.py).
                           `--standardize_features` rescales the extractor's appearance dims
                           to zero mean, unit variance per dim over the training regions (the
                           same map on every split, written to region_feature_norm.json): for
                           a model trained from random weights, which on the raw rows of plain
                           images answers from the question alone. Leave it off to fine-tune a
                           checkpoint pre-trained on raw extractor rows (ShapesWorld).
    "features": "a.npz"    precomputed regions: `features` float32 [N, D] with D = feature_dim
                           (the last 6 dims the normalised box, spec §5.1) or feature_dim - 6 (the
                           box dims are then appended from `boxes` and `image_size` [2] = (h, w),
                           or the size of "image"), `boxes` [N, 4] pixels, optional `tags` [N].
    "image_id": "123"      an image of `--image_records=DIR` (image records written by
                           input_pipeline.storage, e.g. a VinVL TSV import), split
                           `--image_records_split` (default: the split being built).
  Optional: "tags" (one detector class per region; default: none, i.e. empty strings), "phrases"
  ([[word, ...], ...]; default: input_pipeline.phrase_extractor), "image_id" naming an "image" or
  "features" image (default: its path); lines naming the same image must agree on its regions.
  Task fields:
    retrieval  none
    vqa        "answers": ["yes", "yes", "no"] (annotator answers: score min(1, count / 3)), or
               [["yes", 1.0], ...] (explicit scores), or "answer": "yes" (score 1)
    ve         "label": "entailment" | "neutral" | "contradiction" (or 2 | 1 | 0)
    re         "box": [x1, y1, x2, y2], the referred object in pixels of the image
Vocabularies: `--vocab_dir=DIR` reuses DIR's word AND concept vocabularies unchanged (the
pre-training dataset of the checkpoint to fine-tune: its embedding rows keep their meaning);
else `--vocab` (vocab.txt or a SentencePiece .model, with `--id2phrase` kept as it is) when
given, else a WordPiece vocabulary trained on the training texts and tags
(`input_pipeline.train_vocab`); a built concept vocabulary keeps the phrases of at least
`--min_concept_count` training texts. VQA warns when every example of a split lists fewer than
3 annotator answers (each correct answer would then score at most 1/3). VQA's answer
vocabulary holds the answers given in at least `--min_answer_count` training examples.
Any malformed line stops the build with an error naming the file and line.
"""

import collections
import json
import os
import sys
import tempfile
from typing import Any, Mapping, Optional, Sequence

from absl import flags
from absl import logging

from input_pipeline import cli
from input_pipeline import concepts
from input_pipeline import jsonio
from input_pipeline import ownership
from input_pipeline import phrase_extractor
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline import train_vocab
from input_pipeline.tasks import custom_images
from input_pipeline.tasks import examples as examples_lib

TaskDataError = examples_lib.TaskDataError
VE_LABELS = {name: i for i, name in enumerate(examples_lib.VE_LABELS)}
# {'mean': [D - 6], 'std': [D - 6]} of `standardize_features`: x -> (x - mean) / std.
NORM_FILE = 'region_feature_norm.json'


def build_custom_dataset(*, task: str, splits: Mapping[str, str], out_dir: str,
                         image_root: Optional[str] = None, feature_dim: int = 2054,
                         grid: int = 4, vocab: Optional[str] = None,
                         id2phrase: Optional[str] = None, vocab_dir: Optional[str] = None,
                         vocab_size: int = 2000,
                         min_concept_count: int = 1, min_answer_count: int = 1,
                         image_records: Optional[str] = None,
                         image_records_split: Optional[str] = None,
                         overwrite: bool = False, pixels: bool = False,
                         standardize_features: bool = False) -> examples_lib.TaskInfo:
  """Builds `out_dir` from {split: JSON-lines path} (see the module docstring); needs 'train'
  unless the vocabularies are given and the task is not VQA. Returns the TaskInfo.

  Vocabularies: `vocab_dir` (a folder with vocab.txt or *.model and id2phrase.json, e.g. the
  pre-training dataset of the checkpoint to fine-tune) is copied unchanged, words and concept
  rows alike, so a fine-tuned checkpoint's embedding rows keep their meaning; `vocab` (+
  `id2phrase`, kept as it is) gives them as files; otherwise both are built from 'train'.
  `pixels` stores the images for the vision tower (tasks/custom_images.py) instead of running
  the hand-made extractor; `feature_dim` is then unused. `standardize_features` (every line an
  "image", not pixel mode) standardises the extractor's appearance dims with the training
  split's statistics (custom_images.standardize) and writes them to NORM_FILE.
  """
  if task not in examples_lib.TASKS:
    raise ValueError(f'Unknown task {task!r}; expected one of {examples_lib.TASKS}.')
  if os.path.exists(os.path.join(out_dir, examples_lib.TASK_FILE)) and not overwrite:
    raise FileExistsError(f'{out_dir}: already holds a task dataset (pass overwrite=True).')
  if vocab_dir is not None and (vocab is not None or id2phrase is not None):
    raise ValueError('give vocab_dir (both vocabularies of a folder) or vocab (+ id2phrase), '
                     'not both.')
  if id2phrase is not None and vocab is None:
    raise ValueError('id2phrase needs the word vocabulary it extends (vocab).')
  parsed = {split: _read_lines(path, task, image_root) for split, path in splits.items()}
  if standardize_features:
    _check_standardizable(parsed, pixels)
  if 'train' not in parsed and ((vocab is None and vocab_dir is None) or task == 'vqa'):
    raise ValueError('a train split is needed to build the vocabularies (or pass vocab, and for '
                     'VQA a train split for the answers).')
  ownership.claim(out_dir, 'task')
  if task == 'vqa':
    _warn_single_answers(parsed)
  records = {split: custom_images.image_records(lines, feature_dim, grid, image_records,
                                                image_records_split or split, pixels)
             for split, lines in parsed.items()}
  if standardize_features:
    norm = custom_images.standardize(records, 'train')
    os.makedirs(out_dir, exist_ok=True)
    jsonio.write_json_atomically(norm, os.path.join(out_dir, NORM_FILE))
  train_lines = parsed.get('train', [])
  if vocab_dir is not None:
    examples_lib.copy_vocabularies(vocab_dir, out_dir)
  else:
    _build_vocabularies(out_dir, train_lines, records.get('train', {}), vocab, id2phrase,
                        vocab_size, min_concept_count)
  answers = None
  if task == 'vqa':
    counts = collections.Counter(a for line in train_lines for a in line['answers'])
    answers = sorted((a for a, c in counts.items() if c >= min_answer_count),
                     key=lambda a: (-counts[a], a))
    examples_lib.write_answers(out_dir, answers)
  info = None
  for split, lines in parsed.items():
    ans2label = {a: i for i, a in enumerate(answers or ())}
    split_examples = []
    for line in lines:
      example = dict(line['example'])
      if task == 'vqa':
        labels = sorted(ans2label[a] for a in line['answers'] if a in ans2label)
        example['labels'] = labels
        example['scores'] = [line['answers'][answers[l]] for l in labels]
      split_examples.append(example)
    info = examples_lib.write_task_split(out_dir, split, task=task,
                                         records=list(records[split].values()),
                                         examples=split_examples, source=splits[split],
                                         overwrite=overwrite)
  return info


def _check_standardizable(parsed: Mapping[str, list], pixels: bool) -> None:
  """`standardize_features` rescales the hand-made extractor's rows: refuses pixel mode, a
  missing train split and lines whose regions come from elsewhere ("features", "image_id")."""
  if pixels:
    raise ValueError('standardize_features rescales the hand-made extractor\'s features; pixel '
                     'mode runs no extractor.')
  if 'train' not in parsed:
    raise ValueError('standardize_features takes its statistics from a train split.')
  for lines in parsed.values():
    for line in lines:
      spec = line['image']
      if 'image' not in spec or 'features' in spec:
        raise TaskDataError(f'{spec["where"]}: standardize_features rescales the hand-made '
                            'extractor\'s rows: every line must give "image" (no "features" '
                            'or "image_id").')


def _build_vocabularies(out_dir, train_lines, train_records, vocab, id2phrase, vocab_size,
                        min_concept_count) -> None:
  """Stores the tokenizer (given, or trained on the training texts and tags) and the concept
  vocabulary (given, or the training phrases of at least `min_concept_count` texts)."""
  with tempfile.TemporaryDirectory() as tmp:
    if vocab is None:
      corpus = [line['example']['text'] for line in train_lines] + [
          ' '.join(t for t in r['tags'] if t) for r in train_records.values()]
      vocab = os.path.join(tmp, 'vocab.txt')
      train_vocab.train_wordpiece([c for c in corpus if c.strip()], vocab_size, vocab)
    tokenizer = tokenizers.load_tokenizer(vocab)
    if id2phrase is not None:
      concept_vocab = concepts.ConceptVocab.load(id2phrase, tokenizer.vocab_size)
    else:
      concept_vocab = concepts.ConceptVocab.build(
          ([tuple(p) for p in line['example']['phrases']] for line in train_lines), tokenizer,
          min_concept_count)
    storage.save_vocabularies(out_dir, vocab, concept_vocab)


def _warn_single_answers(parsed: Mapping[str, list]) -> None:
  """Warns for each split where every example lists fewer than 3 annotator answers: VQA's soft
  score min(1, count / 3) then caps a correct single answer at 1/3."""
  for split, lines in parsed.items():
    counts = [line['num_annotators'] for line in lines if line['num_annotators'] is not None]
    if counts and len(counts) == len(lines) and max(counts) < 3:
      message = (f'VQA split {split!r}: every example lists fewer than 3 annotator answers '
                 f'(at most {max(counts)}), so a correct answer scores at most '
                 f'{max(counts)}/3 (min(1, count / 3)). For one answer per question write '
                 '"answer": "yes" (score 1) or "answers": [["yes", 1.0]].')
      logging.warning(message)
      print(f'warning: {message}', file=sys.stderr)


def _read_lines(path: str, task: str, image_root: Optional[str]) -> list[dict[str, Any]]:
  """[{'example': task example without image_index, 'image': spec, 'answers': {a: score}}]."""
  root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
  lines = []
  with open(path, encoding='utf-8') as f:
    for line_no, text in enumerate(f, 1):
      if text.strip():
        lines.append(_parse_line(text, f'{path}:{line_no}', task, root, len(lines)))
  if not lines:
    raise TaskDataError(f'{path}: no examples.')
  return lines


def _parse_line(text: str, where: str, task: str, root: str, index: int) -> dict[str, Any]:
  def fail(problem):
    raise TaskDataError(f'{where}: {problem}')

  try:
    entry = json.loads(text)
  except json.JSONDecodeError as e:
    raise TaskDataError(f'{where}: not JSON ({e}).') from None
  if not isinstance(entry, dict):
    fail('expected a JSON object.')
  sentence = entry.get('question' if task == 'vqa' and 'question' in entry else 'text')
  if not isinstance(sentence, str) or not sentence.strip():
    fail('"text" (or, for VQA, "question") must be a non-empty string.')
  sources = [k for k in ('image', 'features') if k in entry]
  if not sources and 'image_id' not in entry:
    fail('give "image", "features" or "image_id".')
  spec = {k: os.path.join(root, entry[k]) for k in sources}
  for key in ('boxes', 'tags'):
    if key in entry:
      spec[key] = entry[key]
  image_id = str(entry.get('image_id') or entry.get('features') or entry.get('image'))
  spec['where'] = where
  phrases = entry.get('phrases')
  if phrases is None:
    phrases = [list(p) for p in phrase_extractor.extract_phrases(sentence)]
  example = {'example_id': str(entry.get('id', index)), 'image_id': image_id,
             'text': sentence, 'phrases': [] if task == 're' else phrases}
  answers, num_annotators = {}, None
  if task == 'vqa':
    answers = _answers(entry, fail)
    if isinstance(entry.get('answers'), list) and all(isinstance(a, str)
                                                       for a in entry['answers']):
      num_annotators = len(entry['answers'])
    example['question_id'] = int(entry.get('question_id', index))
  elif task == 've':
    label = entry.get('label')
    label = VE_LABELS.get(label, label) if isinstance(label, str) else label
    if not isinstance(label, int) or not 0 <= label < 3:
      fail(f'"label" must be one of {list(VE_LABELS)} (or 0..2), got {entry.get("label")!r}.')
    example['label'] = label
  elif task == 're':
    if not isinstance(entry.get('box'), list) or len(entry['box']) != 4:
      fail('"box" must be [x1, y1, x2, y2] pixels.')
    example['target_box'] = entry['box']
  examples_lib.validate_example(  # VQA targets are set once the answer vocabulary is known.
      {**example, **({'labels': [], 'scores': []} if task == 'vqa' else {})}, task, where)
  return {'example': example, 'image': spec, 'answers': answers,
          'num_annotators': num_annotators}


def _answers(entry: Mapping[str, Any], fail) -> dict[str, float]:
  if isinstance(entry.get('answer'), str):
    return {entry['answer'].strip().lower(): 1.0}
  answers = entry.get('answers')
  if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
    return examples_lib.vqa_soft_scores(a.strip().lower() for a in answers)
  if isinstance(answers, list) and answers and all(
      isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
      and isinstance(a[1], (int, float)) and 0 <= a[1] <= 1 for a in answers):
    return {a.strip().lower(): float(s) for a, s in answers}
  fail('VQA needs "answer": str, or "answers": [str, ...] or [[str, score in [0, 1]], ...].')
  return {}


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_enum('task', None, list(examples_lib.TASKS), 'task of the dataset', flag_values=v)
  for split in ('train', 'val', 'test'):
    flags.DEFINE_string(split, None, f'{split} JSON lines', flag_values=v)
  flags.DEFINE_string('image_root', None, 'folder the paths are relative to', flag_values=v)
  flags.DEFINE_string('out_dir', None, 'task dataset directory', flag_values=v)
  flags.DEFINE_integer('feature_dim', 2054, 'region feature width', flag_values=v)
  flags.DEFINE_integer('grid', 4, 'grid boxes per side without boxes', flag_values=v)
  flags.DEFINE_string('vocab', None, 'vocab.txt or SentencePiece .model (default: trained)',
                      flag_values=v)
  flags.DEFINE_string('id2phrase', None, 'concept vocabulary to keep as it is (with --vocab)',
                      flag_values=v)
  flags.DEFINE_string('vocab_dir', None, 'reuse the word AND concept vocabularies of this '
                      'folder (the pre-training dataset of the checkpoint to fine-tune)',
                      flag_values=v)
  flags.DEFINE_integer('vocab_size', 2000, 'size of a trained vocabulary', flag_values=v)
  flags.DEFINE_integer('min_concept_count', 1, 'concepts of at least this many texts',
                       flag_values=v)
  flags.DEFINE_integer('min_answer_count', 1, 'VQA answers of at least this many examples',
                       flag_values=v)
  flags.DEFINE_string('image_records', None, 'image-record dataset for "image_id" lines',
                      flag_values=v)
  flags.DEFINE_string('image_records_split', None, 'its split (default: the split built)',
                      flag_values=v)
  flags.DEFINE_bool('overwrite', False, 'replace complete splits', flag_values=v)
  flags.DEFINE_bool('pixels', False, 'pixel mode: store the images (and boxes) for the vision '
                    'tower instead of running the hand-made region-feature extractor',
                    flag_values=v)
  flags.DEFINE_bool('standardize_features', False, "standardise the hand-made extractor's "
                    'appearance dims with the training statistics (models trained from random '
                    'weights)', flag_values=v)


def _run(a: flags.FlagValues) -> int:
  splits = {s: a[s].value for s in ('train', 'val', 'test') if a[s].value}
  info = build_custom_dataset(
      task=a.task, splits=splits, out_dir=a.out_dir, image_root=a.image_root,
      feature_dim=a.feature_dim, grid=a.grid, vocab=a.vocab, id2phrase=a.id2phrase,
      vocab_dir=a.vocab_dir, vocab_size=a.vocab_size, min_concept_count=a.min_concept_count,
      min_answer_count=a.min_answer_count, image_records=a.image_records,
      image_records_split=a.image_records_split, overwrite=a.overwrite, pixels=a.pixels,
      standardize_features=a.standardize_features)
  print(json.dumps({'task': info.task, 'splits': info.splits}, indent=1))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m input_pipeline.tasks.custom', argv, _define, _run,
                 required=('task', 'out_dir'), what='build')


if __name__ == '__main__':
  sys.exit(main())
