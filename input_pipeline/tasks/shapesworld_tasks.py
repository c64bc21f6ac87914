"""Builds the four ShapesWorld downstream task datasets on the vocabulary of its pre-training data.

  python -m input_pipeline.tasks.shapesworld_tasks --out_dir=/tmp/shapesworld_tasks \\
      --pretraining_dir=/tmp/shapesworld --num_train=2000 --num_val=200 --num_test=200

writes `out_dir/<task>/` for each of retrieval, vqa, ve and re (input_pipeline/tasks/examples.py):
the image records of train / val / test images 0..n-1 (generate.generate_record) and their
examples (generate.generate_downstream; retrieval uses the captions with their gold phrase
groundings). `vocab.txt` and `id2phrase.json` are copied from the pre-training dataset, so a model
pre-trained on it fits; the generation settings (seed, image size, feature_dim, ...) are read from
its `shapesworld_build.json`. Without `--pretraining_dir` the pre-training dataset is first built
(shapesworld/build.py) in `out_dir/pretraining`. Questions and hypotheses get their phrases from
the built-in extractor; RE has none (spec §1.2). VQA's answer vocabulary is generate.vqa_answers().
A task directory already complete with the same settings is left untouched.
"""

import dataclasses
import json
import os
import sys
from typing import Optional, Sequence

from absl import flags

from input_pipeline import cli
from input_pipeline import jsonio
from input_pipeline import ownership
from input_pipeline import phrase_extractor
from input_pipeline.shapesworld import build
from input_pipeline.shapesworld import generate
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing

MARKER_FILE = ownership.SHAPESWORLD_TASKS_FILE


def _phrases(text: str) -> list:
  return [list(p) for p in phrase_extractor.extract_phrases(text)]


def _task_examples(world: generate.ShapesWorldConfig, task: str, split: str, index: int,
                   record: dict, ans2label: dict) -> list[dict]:
  """The task examples on image `index` of `split` (whose record is `record`)."""
  if task == 'retrieval':
    return list(importing.retrieval_examples([record]))
  out = []
  for k, item in enumerate(generate.generate_downstream(world, split, index, task)):
    example = {'example_id': f'{item["image_id"]}#{k}', 'image_id': item['image_id']}
    if task == 'vqa':
      targets = {ans2label[a]: float(s) for a, s in item['answers']}
      example.update(text=item['question'], phrases=_phrases(item['question']),
                     question_id=index * 100 + k, labels=sorted(targets),
                     scores=[targets[l] for l in sorted(targets)])
    elif task == 've':
      example.update(text=item['hypothesis'], phrases=_phrases(item['hypothesis']),
                     label=examples_lib.VE_LABELS.index(item['label']))
    else:
      example.update(text=item['expression'], phrases=[],
                     target_box=[float(v) for v in item['target_box']])
    out.append(example)
  return out


def build_task_dataset(task: str, out_dir: str, pretraining_dir: Optional[str] = None, *,
                       num_train: int = 2000, num_val: int = 200, num_test: int = 200,
                       feature_dim: Optional[int] = None) -> examples_lib.TaskInfo:
  """Writes (or verifies) ShapesWorld task `task` in `out_dir`; returns its TaskInfo.

  Args:
    task: one of examples_lib.TASKS.
    out_dir: the task dataset directory.
    pretraining_dir: a ShapesWorld pre-training dataset (shapesworld/build.py); None builds one
      with the default BuildConfig (and `feature_dim`) in `out_dir/../pretraining`.
    num_train, num_val, num_test: images per split (0 skips the split).
    feature_dim: must match the pre-training data when given.
  """
  if task not in examples_lib.TASKS:
    raise ValueError(f'Unknown task {task!r}; expected one of {examples_lib.TASKS}.')
  if pretraining_dir is None:
    pretraining_dir = os.path.join(os.path.dirname(os.path.abspath(out_dir)), 'pretraining')
    world = generate.ShapesWorldConfig(feature_dim=feature_dim or 134)
    build.build_dataset(pretraining_dir, build.BuildConfig(world=world))
  marker = os.path.join(pretraining_dir, build.BUILD_FILE)
  if not os.path.exists(marker):
    raise FileNotFoundError(f'{marker}: {pretraining_dir} is not a complete ShapesWorld '
                            'pre-training dataset (input_pipeline.shapesworld.build).')
  with open(marker, encoding='utf-8') as f:
    world = build.config_from_dict({**json.load(f)['world']}).world
  if feature_dim is not None and feature_dim != world.feature_dim:
    raise ValueError(f'feature_dim {feature_dim} differs from the pre-training data\'s '
                     f'{world.feature_dim} ({marker}).')
  wanted = {'task': task, 'world': dataclasses.asdict(world), 'num_train': num_train,
            'num_val': num_val, 'num_test': num_test,
            'pretraining_dir': os.path.abspath(pretraining_dir)}
  wanted = json.loads(json.dumps(wanted))
  done = os.path.join(out_dir, MARKER_FILE)
  if os.path.exists(done):
    with open(done, encoding='utf-8') as f:
      existing = json.load(f)
    if existing != wanted:
      raise ValueError(f'{out_dir} holds ShapesWorld {existing}, not {wanted}; use another '
                       'out_dir or delete it.')
    return examples_lib.load_task_info(out_dir)
  ownership.claim(out_dir, 'shapesworld_tasks')
  examples_lib.copy_vocabularies(pretraining_dir, out_dir)
  ans2label = {}
  if task == 'vqa':
    answers = generate.vqa_answers()
    examples_lib.write_answers(out_dir, answers)
    ans2label = {a: i for i, a in enumerate(answers)}
  info = None
  for split, count in (('train', num_train), ('val', num_val), ('test', num_test)):
    if count <= 0:
      continue
    records, task_examples = [], []
    for index in range(count):
      record = generate.generate_record(world, split, index)
      task_examples += _task_examples(world, task, split, index, record, ans2label)
      if task != 'retrieval':
        record.update(captions=[], phrases=[], phrase_regions=[])
      records.append(record)
    info = examples_lib.write_task_split(out_dir, split, task=task, records=records,
                                         examples=task_examples, source='shapesworld',
                                         overwrite=True)
  if info is None:
    raise ValueError('all split sizes are 0.')
  jsonio.write_json_atomically(wanted, done)  # Written last: the task directory is complete.
  return info


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('out_dir', None, 'one task dataset per task under it', flag_values=v)
  flags.DEFINE_string('pretraining_dir', None, 'ShapesWorld pre-training dataset (default: build '
                      'one in out_dir/pretraining)', flag_values=v)
  flags.DEFINE_list('tasks', list(examples_lib.TASKS), 'tasks to build', flag_values=v)
  flags.DEFINE_integer('num_train', 2000, 'training images per task', flag_values=v)
  flags.DEFINE_integer('num_val', 200, 'validation images per task', flag_values=v)
  flags.DEFINE_integer('num_test', 200, 'test images per task', flag_values=v)
  flags.DEFINE_integer('feature_dim', None, 'region feature width (checked against the '
                       'pre-training data; 134 when building it)', flag_values=v)


def _run(a: flags.FlagValues) -> int:
  for task in a.tasks:
    info = build_task_dataset(task, os.path.join(a.out_dir, task), a.pretraining_dir,
                              num_train=a.num_train, num_val=a.num_val, num_test=a.num_test,
                              feature_dim=a.feature_dim)
    print(f'{task}: {json.dumps(info.splits)}')
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m input_pipeline.tasks.shapesworld_tasks', argv, _define, _run,
                 required=('out_dir',), what='build')


if __name__ == '__main__':
  sys.exit(main())
