r"""One-shape VQA from plain images: the hand-made extractor's features vs the tiny ViT on pixels.

  python -m benchmarks.one_shape_vqa --out_dir=/tmp/one_shape_bench [--steps=1000] \
      [--num_train=1000] [--num_val=200] [--paths=features,pixels] [--lr=1e-3] \
      [--dropout=0.0] [--nostandardize_features] [--stem=conv] [--boxes [--crops]] [--bins=1] \
      [--freeze_tower]
  # Fine-tuned from the quickstart pre-training runs instead of random weights:
  python main.py --config=configs/mvp_tiny.py --workdir=/tmp/mvp_tiny
  python main.py --config=configs/mvp_tiny_pixels.py --workdir=/tmp/mvp_tiny_pixels \
      --config.data.directory=/tmp/mvp_tiny/shapesworld
  python -m benchmarks.one_shape_vqa --out_dir=/tmp/one_shape_ft \
      --init_from=features=/tmp/mvp_tiny,pixels=/tmp/mvp_tiny_pixels

Writes one one-shape VQA set (`input_pipeline/tasks/one_shape_vqa.py`: 64 x 64 images of one
coloured shape, 3 questions each: its colour, its kind, a yes/no about one of them) to
`<out_dir>/raw`, and builds it twice through the custom-dataset path
(`custom.build_custom_dataset(task='vqa')`, the same JSON lines and regions: the `--grid` cells
+ the whole image, or with `--boxes` the shape's own box given in each line, as a detector would):
`<out_dir>/features` with the hand-made extractor (`--feature_dim` dims per region; its
appearance dims standardised with the training statistics, `--standardize_features`, without
which the run answers from the question alone) and
`<out_dir>/pixels` keeping the images (`pixels=True`). Each is trained from random weights with
`configs/vqa_shapesworld.py:scratch` (the tiny MVPTR, batch 32, lr 2e-4, BCE over the answer
vocabulary) but `--dropout` (hidden and attention, default 0: from random weights the
config's 0.1 slows the fit, see the README), the same `--steps`, data and seed; the pixel run
adds the tiny ViT of `configs/mvp_tiny_pixels.py` (`use_tower`: 2 blocks, width 64, 8 px
patches or `--stem=conv`, RoIAlign of the same boxes; `--bins=k` keeps k x k sub-boxes of each,
`--crops` (with `--boxes`) puts each box's own crop through the tower instead:
`model.vision.bins` / `crops`) trained with the rest. With `--init_from`
each path is fine-tuned instead from a pre-training run of its own kind
(`configs/vqa_shapesworld.py` with `init_from`, the answer head's transform from the MLM head):
both sets then take the runs' shared ShapesWorld vocabularies (`vocab_dir`, the features run's
dataset folder, which the pixel run must have read) and the feature rows stay raw, as the
pre-training run saw them. Nothing is tuned on the held-out split. Prints, per path, the VQA
accuracy on the training split and on the held-out split (clean inputs, after the last step),
the accuracy per question type (colour, kind, yes/no) on both splits, the training examples/s
(median over the log windows after the first, which compiles) and the wall time of the run
including evaluation.
"""

import json
import os
import statistics
import time
from typing import Optional, Sequence

from absl import app
from absl import flags

from configs import finetune_common
from configs import mvp_tiny_pixels
from configs import vqa_shapesworld
from input_pipeline.tasks import custom
from input_pipeline.tasks import one_shape_vqa
from mvp_jax import run_dir
from mvp_jax.vision import pixel_config

FLAGS = flags.FLAGS
PATHS = ('features', 'pixels')
QUESTION_TYPES = {'what colour': 'colour', 'what shape': 'kind', 'is ': 'yes/no'}


def define_flags() -> None:
  flags.DEFINE_string('out_dir', None, 'folder for the data and the two runs (must be new)')
  flags.DEFINE_integer('num_train', 1000, 'training images (3 questions each)')
  flags.DEFINE_integer('num_val', 200, 'held-out images (3 questions each)')
  flags.DEFINE_integer('steps', 1000, 'training steps of each path')
  flags.DEFINE_integer('grid', 4, 'regions: grid x grid cells + the whole image')
  flags.DEFINE_bool('boxes', False, "regions: the shape's own box instead of the grid cells "
                    '(each JSON line gives it, as a detector would)')
  flags.DEFINE_integer('feature_dim', 134, 'hand-made extractor dims per region (tiny MVPTR)')
  flags.DEFINE_integer('seed', 0, 'generation seed')
  flags.DEFINE_list('paths', list(PATHS), 'which of features, pixels to train')
  flags.DEFINE_float('lr', None, "peak learning rate of every path (default: the config's 2e-4)")
  flags.DEFINE_float('dropout', 0.0, 'hidden and attention dropout of every path (the config: 0.1)')
  flags.DEFINE_enum('stem', 'patch', ('patch', 'conv'), "the pixel path's tower stem "
                    '(model.vision.stem: the 8 px patch convolution, or a convolutional stem)')
  flags.DEFINE_bool('crops', False, "the pixel path's regions by crop and encode "
                    '(model.vision.crops: each box resampled to 64 x 64 through the tower alone)')
  flags.DEFINE_integer('bins', 1, "the pixel path's sub-boxes per side of a region "
                       '(model.vision.bins: k x k pooled tower states per region, in order)')
  flags.DEFINE_bool('freeze_tower', False, "the pixel path's tower frozen (model.vision.freeze), "
                    'e.g. a pre-trained tower under --init_from')
  flags.DEFINE_list('init_from', [], 'path=run dir pairs (features=DIR, pixels=DIR): fine-tune '
                    'that path from its pre-training run instead of random weights')
  flags.DEFINE_bool('standardize_features', True, "standardise the extractor's appearance dims "
                    '(custom.build_custom_dataset(standardize_features=True))')
  flags.mark_flag_as_required('out_dir')


def build_datasets(out_dir: str, num_train: int, num_val: int, grid: int, feature_dim: int,
                   seed: int, standardize_features: bool = True,
                   vocab_dir: Optional[str] = None, boxes: bool = False) -> dict:
  """{'features': dir, 'pixels': dir}: one generated set, built by both custom-dataset modes
  (with `vocab_dir`'s vocabularies when given, else ones trained on the set; regions the grid
  cells, or with `boxes` the shape's box given in each line)."""
  raw = os.path.join(out_dir, 'raw')
  splits = {split: one_shape_vqa.write_split(raw, split, count, seed=seed, boxes=boxes)
            for split, count in (('train', num_train), ('val', num_val))}
  directories = {}
  for path in PATHS:
    directories[path] = os.path.join(out_dir, path)
    custom.build_custom_dataset(task='vqa', splits=splits, out_dir=directories[path], grid=grid,
                                feature_dim=feature_dim, pixels=path == 'pixels',
                                standardize_features=standardize_features and path == 'features',
                                vocab_dir=vocab_dir)
  return directories


def task_config(directory: str, steps: int, grid: int, pixels: bool, lr=None,
                dropout: float = 0.0, stem: str = 'patch', init_from: str = '',
                freeze_tower: bool = False, boxes: bool = False, crops: bool = False,
                bins: int = 1):
  """configs/vqa_shapesworld.py (`:scratch` without `init_from`) on a records folder, evaluated
  on train and val, with `dropout` as the hidden and the attention dropout (None: the config's);
  `boxes`: each image's one region is its shape's box (else the grid cells + the whole image)."""
  config = vqa_shapesworld.get_config('' if init_from else 'scratch')
  config.init_from = init_from
  if lr is not None:
    config.optimizer.lr = lr
  if dropout is not None:
    config.model.update(dropout_rate=dropout, attention_dropout_rate=dropout)
  config.data.kind = 'records'
  config.data.directory = directory
  config.data.max_img_seq_length = 1 if boxes else grid * grid + 1
  config.total_steps = steps
  config.checkpoint_every = steps
  finetune_common.set_evals(config, ('train', 'val'), every=0, predictions=True)
  if pixels:
    mvp_tiny_pixels.use_tower(config)
    config.model.vision.update(stem=stem, freeze=freeze_tower, crops=crops, bins=bins)
    config.model.region_feature_dim = pixel_config.from_value(config.model.vision).feature_dim
  return config


def accuracy_by_type(predictions_path: str, lines_path: str) -> dict:
  """{question type: accuracy} of a VQA predictions file against the split's JSON lines."""
  with open(predictions_path, encoding='utf-8') as f:
    predicted = {p['question_id']: p['answer'] for p in json.load(f)}
  hits = {}
  with open(lines_path, encoding='utf-8') as f:
    for line in map(json.loads, f):
      kind = next(t for prefix, t in QUESTION_TYPES.items() if line['question'].startswith(prefix))
      hits.setdefault(kind, []).append(predicted[line['question_id']] == line['answer'])
  return {kind: sum(h) / len(h) for kind, h in hits.items()}


def run(config, workdir: str, raw_dir: str) -> dict:
  """{'train', 'val' accuracy, '<split>_by_type', 'examples_per_s', 'wall_s'} of one run."""
  from mvp_jax import train  # pylint: disable=g-import-not-at-top
  start = time.time()
  results = train.train_and_evaluate(config, workdir)
  wall = time.time() - start
  with open(os.path.join(workdir, train.METRICS_FILE), encoding='utf-8') as f:
    rates = [row['train/examples_per_s'] for row in map(json.loads, f)
             if 'train/examples_per_s' in row]
  by_type = {f'{split}_by_type': accuracy_by_type(
      os.path.join(workdir, f'vqa_predictions_{split}.json'),
      os.path.join(raw_dir, f'{split}.jsonl')) for split in ('train', 'val')}
  return {'train': results['train/vqa/accuracy'], 'val': results['val/vqa/accuracy'], **by_type,
          'examples_per_s': statistics.median(rates[1:] or rates), 'wall_s': wall}


def parse_init_from(pairs: Sequence[str]) -> dict:
  """{path: run dir} of `--init_from` 'path=DIR' items; refuses unknown paths and a pixel run
  without the features run whose dataset folder (`run_dir.find_dataset_dir`) gives the
  vocabularies."""
  runs = {}
  for pair in pairs:
    path, _, directory = pair.partition('=')
    if path not in PATHS or not directory:
      raise app.UsageError(f'--init_from: expected features=DIR or pixels=DIR, got {pair!r}.')
    runs[path] = directory
  if runs and 'features' not in runs:
    raise app.UsageError('--init_from needs features=DIR: its dataset folder gives both sets '
                         'their vocabularies (the pixel run must have read the same folder).')
  return runs


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  init_from = parse_init_from(FLAGS.init_from)
  unknown = sorted(set(FLAGS.paths) - set(PATHS))
  if unknown:
    raise app.UsageError(f'--paths: unknown {unknown}; known: {list(PATHS)}')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  if os.path.exists(FLAGS.out_dir):
    raise app.UsageError(f'--out_dir={FLAGS.out_dir} exists: give a new folder.')
  vocab_dir = run_dir.find_dataset_dir(init_from['features']) if init_from else None
  directories = build_datasets(FLAGS.out_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.grid,
                               FLAGS.feature_dim, FLAGS.seed,
                               FLAGS.standardize_features and not init_from, vocab_dir,
                               FLAGS.boxes)
  rows = {}
  for path in FLAGS.paths:
    config = task_config(directories[path], FLAGS.steps, FLAGS.grid, path == 'pixels', FLAGS.lr,
                         FLAGS.dropout, FLAGS.stem, init_from.get(path, ''),
                         FLAGS.freeze_tower, FLAGS.boxes, FLAGS.crops, FLAGS.bins)
    rows[path] = run(config, os.path.join(FLAGS.out_dir, f'run_{path}'),
                     os.path.join(FLAGS.out_dir, 'raw'))
    print(f'{path}: {rows[path]}', flush=True)
  print(f'\n{FLAGS.num_train} train / {FLAGS.num_val} held-out images (x3 questions), '
        f'{FLAGS.steps} steps of batch 32, from {init_from or "scratch"}, '
        f'lr {config.optimizer.lr:g}, '
        f'dropout {config.model.dropout_rate:g}, features standardised: '
        f'{FLAGS.standardize_features and not init_from}, stem {FLAGS.stem}, '
        f'tower {"frozen" if FLAGS.freeze_tower else "trained"}, regions '
        f'{"the shape box" if FLAGS.boxes else f"{FLAGS.grid}x{FLAGS.grid} grid + whole image"}'
        f'{" (pixels: crop and encode)" if FLAGS.crops else ""}, {FLAGS.bins}x{FLAGS.bins} bins')
  types = tuple(dict.fromkeys(QUESTION_TYPES.values()))
  print('| path | train accuracy | held-out accuracy | train / held-out by type (' +
        ', '.join(types) + ') | training examples/s | wall |')
  print('|---|---|---|---|---|---|')
  for path, row in rows.items():
    by_type = '; '.join(f"{row['train_by_type'][t]:.2f} / {row['val_by_type'][t]:.2f}"
                        for t in types)
    print(f"| {path} | {row['train']:.3f} | {row['val']:.3f} | {by_type} | "
          f"{row['examples_per_s']:.0f} | {row['wall_s'] / 60:.1f} min |")


if __name__ == '__main__':
  define_flags()
  app.run(main)
