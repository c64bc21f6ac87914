r"""Does a tower see a shape's kind? Probes on the one-shape images, outside the VQA model.

  python -m benchmarks.one_shape_kind_probe --stems=patch,conv [--num_train=1000] [--steps=1000]
  python -m benchmarks.one_shape_kind_probe --run_dir=/tmp/mvp_tiny_pixels   # a trained tower
  python -m benchmarks.one_shape_kind_probe --extractor      # the hand-made extractor's rows

The images and labels are `input_pipeline/tasks/one_shape_vqa.py`'s (seed 0: `--num_train`
training, `--num_val` held-out images; the label is the shape's kind, 7 classes, or with
`--label=colour` its colour, 8 classes).

Without `--run_dir`: for each stem, the tiny ViT of `configs/mvp_tiny_pixels.py` (TOWER, with
`model.vision.stem`) from random weights and a linear classifier on one pooled feature, trained
together on the label alone (softmax cross-entropy, AdamW lr `--lr`, weight decay 0.01, batch
32, `--steps` steps): the best a tower of that shape can learn from these images with direct
supervision. Features per `--pooling`: 'box' = RoIAlign of the shape's own box (as a detector
would give), 'grid' = the 4 x 4 cells + whole image concatenated (the custom path's regions).

With `--run_dir` (a pixel run of ours, e.g. the quickstart's pixel pre-training or a
`benchmarks.one_shape_vqa` run): the run's tower, frozen, and a linear probe on its pooled
features (standardised with the training statistics, softmax cross-entropy + 1e-3 L2, Adam 1e-2,
300 full-batch steps): how much of the label the trained tower's regions carry linearly.
With `--extractor`, the same probe on the hand-made extractor's 134-d rows of the same box or
cells (`input_pipeline/region_features.py`, as the custom path's features mode writes them).

Prints train and held-out accuracy per row; nothing is chosen on the held-out split.
"""

import json
import os
from typing import Sequence

from absl import app
from absl import flags
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import mvp_tiny_pixels
from input_pipeline import region_features
from input_pipeline.shapesworld import scenes
from input_pipeline.tasks import one_shape_vqa
from mvp_jax import config as config_lib
from mvp_jax import pixel_model
from mvp_jax import run_dir as run_dir_lib
from mvp_jax import weights
from mvp_jax.vision import pixel_config
from mvp_jax.vision import regions
from mvp_jax.vision import towers

FLAGS = flags.FLAGS
POOLINGS = ('box', 'grid')
EXTRACTOR_DIM = 134  # the tiny MVPTR's rows (benchmarks/one_shape_vqa.py --feature_dim)
LABELS = {'kind': scenes.KINDS, 'colour': scenes.COLOUR_NAMES}


def define_flags() -> None:
  flags.DEFINE_string('run_dir', None, 'probe this pixel run\'s trained tower (frozen)')
  flags.DEFINE_bool('extractor', False, "probe the hand-made extractor's rows instead")
  flags.DEFINE_list('stems', ['patch', 'conv'], 'stems trained from scratch (without run_dir)')
  flags.DEFINE_list('pooling', list(POOLINGS), 'pooled features: box, grid')
  flags.DEFINE_enum('label', 'kind', tuple(LABELS), 'what to classify')
  flags.DEFINE_integer('num_train', 1000, 'training images')
  flags.DEFINE_integer('num_val', 200, 'held-out images')
  flags.DEFINE_integer('steps', 1000, 'training steps (from scratch)')
  flags.DEFINE_float('lr', 2e-4, 'AdamW learning rate (from scratch)')


def images(split: str, count: int, label: str, raw: bool = False) -> tuple:
  """(pixels float32 [N, 64, 64, 3] in [-1, 1] (uint8 with `raw`), labels int [N], normalised
  boxes [N, 4])."""
  pixels, labels, boxes = [], [], []
  for index in range(count):
    image, box, questions = one_shape_vqa.generate_example(0, split, index)
    answer = questions[0][1] if label == 'colour' else questions[1][1]
    pixels.append(image if raw else pixel_model.normalise(image))
    labels.append(LABELS[label].index(answer))
    boxes.append(np.asarray(box, np.float32) / image.shape[0])
  return np.stack(pixels), np.asarray(labels), np.stack(boxes)


def pooled(tower_out: dict, boxes: jax.Array, pooling: str) -> jax.Array:
  """[N, F]: the tower's tokens pooled over each image's box ('box', F = D), or over the 4 x 4
  cells + whole image, concatenated ('grid', F = 17 D)."""
  count = boxes.shape[0]
  boxes = (boxes[:, None] if pooling == 'box'
           else jnp.broadcast_to(jnp.asarray(regions.grid_boxes(4)), (count, 17, 4)))
  weights_ = regions.pooling_weights(boxes, tower_out['grid'], 'bilinear', 0)
  return regions.pool(tower_out['tokens'], weights_).reshape(count, -1)


class Classifier(nn.Module):
  """Tower + pooling + linear head: [N, S, S, 3], [N, 4] -> logits [N, classes]."""
  spec: pixel_config.PixelConfig
  pooling: str
  classes: int

  @nn.compact
  def __call__(self, pixels, boxes):
    out = towers.VisionTower(self.spec.siglip_config())(pixels)
    return nn.Dense(self.classes)(pooled(out, boxes, self.pooling))


def train_from_scratch(stem: str, pooling: str, train: tuple, val: tuple, classes: int,
                       steps: int, lr: float) -> tuple:
  """(train accuracy, held-out accuracy) of the tower + linear head trained on the labels."""
  spec = pixel_config.from_value(dict(mvp_tiny_pixels.TOWER, stem=stem))
  model = Classifier(spec, pooling, classes)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), train[0][:2], train[2][:2]))
  optimizer = optax.adamw(lr, weight_decay=0.01)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, pixels, labels, boxes):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply(p, pixels, boxes), labels).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  accuracy = jax.jit(lambda p, x, y, b: (model.apply(p, x, b).argmax(-1) == y).mean())
  rng = np.random.default_rng(0)
  for _ in range(steps):
    batch = rng.integers(0, len(train[1]), 32)
    params, opt_state = step(params, opt_state, *(part[batch] for part in train))
  return tuple(float(accuracy(params, *split)) for split in (train, val))


def linear_probe(train_features, train_labels, val_features, val_labels, classes: int) -> tuple:
  """(train, held-out accuracy) of a standardised linear softmax probe on fixed features."""
  mean, std = train_features.mean(0), train_features.std(0) + 1e-6
  x_train, x_val = (train_features - mean) / std, (val_features - mean) / std
  w = jnp.zeros((x_train.shape[1] + 1, classes))
  with_bias = lambda x: jnp.concatenate([x, jnp.ones((x.shape[0], 1))], 1)
  x_train, x_val = with_bias(x_train), with_bias(x_val)
  loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(
      x_train @ w, train_labels).mean() + 1e-3 * (w ** 2).sum()
  optimizer = optax.adam(1e-2)
  state = optimizer.init(w)
  update = jax.jit(lambda w, s: optimizer.update(jax.grad(loss)(w), s))
  for _ in range(300):
    delta, state = update(w, state)
    w = w + delta
  return tuple(float(((x @ w).argmax(1) == y).mean())
               for x, y in ((x_train, train_labels), (x_val, val_labels)))


def extractor_rows(split: tuple, pooling: str) -> np.ndarray:
  """[N, F]: the hand-made extractor's rows of each image's box, or of its 4 x 4 cells + whole
  image concatenated (uint8 images of `images(..., raw=True)`)."""
  rows = []
  for image, box in zip(split[0], split[2]):
    size = image.shape[0]
    boxes = (box[None] * size if pooling == 'box'
             else region_features.grid_boxes(size, size, 4))
    rows.append(region_features.extract_region_features(image, boxes, EXTRACTOR_DIM).reshape(-1))
  return np.stack(rows)


def run_tower(run: str) -> tuple:
  """(VisionTower, its params) of a pixel run's latest checkpoint."""
  model_config = config_lib.ModelConfig.from_dict(
      run_dir_lib.read_json(os.path.join(run, run_dir_lib.MODEL_CONFIG_FILE)))
  if model_config.vision is None:
    raise app.UsageError(f'--run_dir={run} has no vision tower (model.vision is features).')
  tree = {path[2:]: jnp.asarray(value) for path, value in weights.read(run).tree.items()
          if path[:2] == pixel_model.TOWER_PATH}
  params = traverse_util.unflatten_dict(tree)
  return pixel_model.tower_module(model_config), params


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  unknown = sorted(set(FLAGS.pooling) - set(POOLINGS))
  if unknown:
    raise app.UsageError(f'--pooling: unknown {unknown}; known: {list(POOLINGS)}')
  classes = len(LABELS[FLAGS.label])
  train = images('train', FLAGS.num_train, FLAGS.label, raw=FLAGS.extractor)
  val = images('val', FLAGS.num_val, FLAGS.label, raw=FLAGS.extractor)
  print(f'{FLAGS.label} of one shape, {FLAGS.num_train} training / {FLAGS.num_val} held-out '
        f'images, chance {1 / classes:.3f}')
  rows = []
  if FLAGS.extractor:
    for pooling in FLAGS.pooling:
      features = [extractor_rows(split, pooling) for split in (train, val)]
      rows.append((f'hand-made extractor ({EXTRACTOR_DIM}-d rows), linear probe', pooling,
                   *linear_probe(features[0], train[1], features[1], val[1], classes)))
  elif FLAGS.run_dir:
    tower, params = run_tower(FLAGS.run_dir)
    encode = jax.jit(lambda x: tower.apply({'params': params}, x))
    for pooling in FLAGS.pooling:
      features = [pooled(encode(x), b, pooling) for x, _, b in (train, val)]
      rows.append((f'{FLAGS.run_dir} (frozen), linear probe', pooling,
                   *linear_probe(features[0], train[1], features[1], val[1], classes)))
  else:
    for stem in FLAGS.stems:
      for pooling in FLAGS.pooling:
        rows.append((f'{stem} stem from scratch, {FLAGS.steps} steps', pooling,
                     *train_from_scratch(stem, pooling, train, val, classes, FLAGS.steps,
                                         FLAGS.lr)))
        print(json.dumps(rows[-1]), flush=True)
  print('| tower | pooled over | train accuracy | held-out accuracy |\n|---|---|---|---|')
  for tower_name, pooling, train_accuracy, val_accuracy in rows:
    print(f'| {tower_name} | {pooling} | {train_accuracy:.3f} | {val_accuracy:.3f} |')


if __name__ == '__main__':
  define_flags()
  app.run(main)
