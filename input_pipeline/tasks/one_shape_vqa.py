r"""A small VQA set of plain images, each holding one coloured shape, as a new user would write it.

  python -m input_pipeline.tasks.one_shape_vqa --out_dir=/tmp/one_shape [--num_train=1000]
  python -m input_pipeline.tasks.custom --task=vqa --train=/tmp/one_shape/train.jsonl \
      --val=/tmp/one_shape/val.jsonl --out_dir=/tmp/one_shape_data [--pixels]

Writes `<split>/<index>.png` (image_size x image_size RGB: one ShapesWorld shape, any of its 7
kinds and 8 colours, small or large, anywhere, on a flat grey background) and `<split>.jsonl`,
JSON lines of the custom-dataset path (tasks/custom.py): {"image", "question", "answer"} with
the image path relative to the JSON-lines file, and no boxes (plain images: the custom path uses
its grid cells; `--boxes` adds the shape's pixel box, tight around the drawn shape). Questions
per image, one of each:
  colour   "what colour is the shape?"                      -> the colour name
  shape    "what shape is it?"                               -> the kind
  yes/no   "is the shape <colour>?" or "is it a <kind>?"     -> "yes" / "no", half each
Every image is a pure function of (seed, split, index), so the splits are disjoint and any
image can be regenerated alone.
"""

import json
import os
import sys
from typing import Optional, Sequence

from absl import flags
import numpy as np

from input_pipeline import cli
from input_pipeline.shapesworld import render
from input_pipeline.shapesworld import scenes

SPLITS = ('train', 'val', 'test')


def generate_example(seed: int, split: str, index: int, image_size: int = 64) -> tuple:
  """(image uint8 [S, S, 3], pixel box [4] of the shape, [(question, answer)] of one image)."""
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  scene = scenes.sample_scene(rng, image_size, max_objects=1)
  image, extents = render.render_scene(scene, image_size)
  shape = scene.objects[0]
  u = rng.random(3)
  if u[0] < 0.5:
    other = [c for c in scenes.COLOUR_NAMES if c != shape.colour][int(u[1] * 7)]
    colour = shape.colour if u[2] < 0.5 else other
    yes_no = (f'is the shape {colour}?', 'yes' if colour == shape.colour else 'no')
  else:
    other = [k for k in scenes.KINDS if k != shape.kind][int(u[1] * 6)]
    kind = shape.kind if u[2] < 0.5 else other
    yes_no = (f'is it a {kind}?', 'yes' if kind == shape.kind else 'no')
  questions = [('what colour is the shape?', shape.colour), ('what shape is it?', shape.kind),
               yes_no]
  return image, extents[0], questions


def write_split(out_dir: str, split: str, num_images: int, *, seed: int = 0,
                image_size: int = 64, boxes: bool = False) -> str:
  """Writes `out_dir/<split>/*.png` and `out_dir/<split>.jsonl`; returns the JSON-lines path."""
  os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  path = os.path.join(out_dir, f'{split}.jsonl')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    for index in range(num_images):
      image, box, questions = generate_example(seed, split, index, image_size)
      name = f'{split}/{index:06d}.png'
      with open(os.path.join(out_dir, name), 'wb') as png:
        png.write(render.encode_png(image))
      for k, (question, answer) in enumerate(questions):
        line = {'image': name, 'question': question, 'answer': answer,
                'question_id': index * len(questions) + k}
        if boxes:
          line['boxes'] = [[float(v) for v in box]]
        f.write(json.dumps(line) + '\n')
  os.replace(path + '.tmp', path)
  return path


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('out_dir', None, 'output folder', flag_values=v)
  flags.DEFINE_integer('num_train', 1000, 'training images (3 questions each)', flag_values=v)
  flags.DEFINE_integer('num_val', 200, 'held-out images', flag_values=v)
  flags.DEFINE_integer('seed', 0, 'generation seed', flag_values=v)
  flags.DEFINE_integer('image_size', 64, 'image side in pixels', flag_values=v)
  flags.DEFINE_bool('boxes', False, "give the shape's box in each line", flag_values=v)


def _run(a: flags.FlagValues) -> int:
  for split, count in (('train', a.num_train), ('val', a.num_val)):
    if count > 0:
      print(write_split(a.out_dir, split, count, seed=a.seed, image_size=a.image_size,
                        boxes=a.boxes))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m input_pipeline.tasks.one_shape_vqa', argv, _define, _run,
                 required=('out_dir',), what='generation')


if __name__ == '__main__':
  sys.exit(main())
