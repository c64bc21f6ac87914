r"""Command line of `mvp_jax.inference`: one prediction on a ShapesWorld image or an image file.

  python -m mvp_jax.inference_cli --workdir=/tmp/mvp_tiny --shapesworld_index=3 \
      --text="a red [MASK] left of a blue square" --task=fill_mask|match|ground
  python -m mvp_jax.inference_cli --exported=/tmp/mvp_tiny_hf --image=photo.png --task=match
"""

import json
from typing import Optional

from absl import app
from absl import flags

from input_pipeline import cli

from mvp_jax import inference


def _format(task: str, result) -> str:
  if task == 'fill_mask':
    lines = [result['text']]
    for i, candidates in enumerate(result['masks']):
      lines.append(f'[MASK] {i}: ' + ', '.join(f'{w} ({p:.3f})' for w, p in candidates))
    return '\n'.join(lines)
  if task == 'match':
    return f'P(matched) = {result:.4f}'
  lines = []
  for phrase, region, box in zip(result['phrases'], result['region'], result['phrase_boxes']):
    tag = result['tags'][region] if region < len(result['tags']) else ''
    lines.append(f'{" ".join(phrase)!r} -> region {region} {tag} box '
                 f'{[round(float(v), 1) for v in box]}')
  return '\n'.join(lines) or 'No phrase of the text is in the concept vocabulary.'


def run_cli(path: str, text: str, task: str = 'fill_mask', shapesworld_index: int = 0,
            split: str = 'val', image: Optional[str] = None, top_k: int = 5) -> str:
  """What `python -m mvp_jax.inference_cli` prints (see the module docstring)."""
  predictor = inference.Predictor.load(path)
  lines = []
  if image:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    example = Image.open(image)
  else:
    example = predictor.shapesworld_record(shapesworld_index, split)
    lines.append(f'ShapesWorld {split} image {shapesworld_index}: captions '
                 f'{json.dumps(example["captions"])}')
  if task == 'fill_mask':
    result = predictor.fill_mask(example, text, top_k=top_k)
  elif task == 'match':
    result = predictor.match_score(example, text)
  elif task == 'ground':
    result = predictor.ground(example, text)
  else:
    raise ValueError(f"task must be 'fill_mask', 'match' or 'ground', got {task!r}.")
  lines.append(_format(task, result))
  return '\n'.join(lines)


def main(argv) -> None:
  del argv
  values = flags.FLAGS
  path = values.workdir or values.exported
  if not path:
    raise ValueError('Pass --workdir (a training run) or --exported (an exported folder).')
  print(run_cli(path, values.text, values.task, values.shapesworld_index, values.split,
                values.image, values.top_k))


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', None, 'A training run (its workdir) to predict with.',
                      flag_values=values)
  flags.DEFINE_string('exported', None, 'Or a folder written by mvp_jax.export_hf '
                      '(mvp-export).', flag_values=values)
  flags.DEFINE_integer('shapesworld_index', 0, "Index of the ShapesWorld image (of the run's "
                       'dataset) to predict on, when --image is not given.', flag_values=values)
  flags.DEFINE_string('split', 'val', 'ShapesWorld split of --shapesworld_index.',
                      flag_values=values)
  flags.DEFINE_string('image', None, 'An image file instead of ShapesWorld (its regions are a '
                      'fixed grid plus the whole image).', flag_values=values)
  flags.DEFINE_string('text', 'a red [MASK] left of a blue square', 'The caption; for '
                      'fill_mask, [MASK] marks the words to predict.', flag_values=values)
  flags.DEFINE_enum('task', 'fill_mask', ['fill_mask', 'match', 'ground'], 'fill_mask: predict '
                    'the [MASK] words; match: P(text matches image); ground: the region each '
                    'phrase of the text points at.', flag_values=values)
  flags.DEFINE_integer('top_k', 5, 'fill_mask: candidates printed per [MASK].',
                       flag_values=values)


def run() -> None:
  """`python -m mvp_jax.inference_cli` and the `mvp-predict` console script."""
  cli.exit_on_help('python -m mvp_jax.inference_cli', __doc__, define_flags)
  define_flags(flags.FLAGS)
  app.run(main)


if __name__ == '__main__':
  run()
