"""What a pre-training run shows at the end: numbers beside their chance levels, and a picture.

  text = quickstart.report(config, workdir, results)   # main.py prints it

`summary(results)` lists the truth-aware R@1 in both directions (a hit is any image / caption the
query is true of, input_pipeline/true_matches.py), the standard single-positive R@1, phrase
grounding accuracy and ITM accuracy (on truth-checked reranked pairs, the hardest; on
truth-checked own + random pairs, the easy ones; and in training against the mined negatives),
each with its chance level. `grounding_picture` draws the grounding of one
validation caption: for each of its linked phrases the region the model picks (green when it is
the gold one, red otherwise, with the gold box in yellow), saved as `{workdir}/grounding.png` and
written to TensorBoard (`grounding` image).
"""

import io
import os
from typing import Mapping, Optional, Sequence, Tuple

from clu import metric_writers
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageDraw

from input_pipeline import storage
from mvp_jax import api
from mvp_jax import data
from mvp_jax import model as model_lib
from mvp_jax.evaluators import grounding

PICTURE = 'grounding.png'
# (label, metric, chance metric or a constant): metrics are matched by their name after the prefix.
ROWS = (
    ('text->image R@1, any true image is a hit', 'truth_t2i_R@1', 'truth_t2i_chance_R@1'),
    ('image->text R@1, any true caption is a hit', 'truth_i2t_R@1', 'truth_i2t_chance_R@1'),
    ('text->image R@1, own image only', 't2i_R@1', 'num_images'),
    ('image->text R@1, own captions only', 'i2t_R@1', None),
    ('phrase grounding accuracy', 'grounding_accuracy', 'grounding_chance'),
    ('ITM accuracy, truth-checked reranked pairs (balanced)', 'truth_itm_accuracy', 0.5),
    ('ITM accuracy, truth-checked own/random pairs (balanced)', 'truth_itm_random_accuracy',
     0.5),
    ('ITM accuracy in training, vs mined negatives', 'train/itm_accuracy', 0.5),
)


def _find(results: Mapping[str, float], name: str) -> Optional[float]:
  for key, value in results.items():
    if key == name or key.endswith('/' + name):
      return float(value)
  return None


def summary(results: Mapping[str, float]) -> str:
  """The rows of ROWS found in `results`, as an aligned table: metric, value, chance."""
  lines = [f'{"":56s} {"result":>7s} {"chance":>7s}']
  for label, name, chance in ROWS:
    assert len(label) <= 56, label
    value = _find(results, name)
    if value is None:
      continue
    if chance == 'num_images':
      images = _find(results, 'num_images')
      chance = 1.0 / images if images else None
    elif isinstance(chance, str):
      chance = _find(results, chance)
    chance_text = f'{chance:7.3f}' if chance is not None else f'{"":7s}'
    lines.append(f'{label:56s} {value:7.3f} {chance_text}')
  return '\n'.join(lines)


def draw_grounding(image: np.ndarray, boxes: np.ndarray,
                   phrases: Sequence[Tuple[str, int, int]], caption: str,
                   scale: int = 4) -> np.ndarray:
  """The image enlarged `scale` times with each phrase's chosen box and a legend.

  Args:
    image: uint8 [H, W, 3]; boxes: [N, 4] (x0, y0, x1, y1) pixels, indexed by region slot.
    phrases: (label, chosen slot, gold slot) per phrase.
    caption: written above the legend.

  Returns:
    uint8 [H', W', 3].
  """
  height, width = image.shape[:2]
  big = Image.fromarray(np.asarray(image, np.uint8)).resize((width * scale, height * scale),
                                                            Image.NEAREST)
  line = 12
  canvas = Image.new('RGB', (max(big.width, 320), big.height + line * (len(phrases) + 2)),
                     (255, 255, 255))
  canvas.paste(big, (0, 0))
  draw = ImageDraw.Draw(canvas)
  draw.text((2, big.height + 2), caption, fill=(0, 0, 0))
  for k, (label, chosen, gold) in enumerate(phrases):
    right = chosen == gold
    colour = (0, 160, 0) if right else (220, 0, 0)
    if not right and 0 <= gold < len(boxes):
      draw.rectangle([float(c) * scale for c in boxes[gold]], outline=(240, 200, 0), width=1)
    x0, y0, x1, y1 = (float(c) * scale for c in boxes[chosen])
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    draw.text((x0 + 2, y0 + 1), str(k + 1), fill=colour)
    draw.text((2, big.height + line * (k + 1) + 2),
              f'{k + 1}. {label}: {"right" if right else "wrong (gold in yellow)"}', fill=colour)
  return np.asarray(canvas, np.uint8)


def grounding_picture(config: ml_collections.ConfigDict, directory: str, model_cfg, params,
                      split: str = 'val', row: int = 0) -> np.ndarray:
  """uint8 [H, W, 3]: `draw_grounding` of caption `row` of `split` of the dataset `directory`
  by the pre-training model (`model_cfg`, unboxed `params`)."""
  batch = next(iter(data.create_iterator(config.data, directory, split,
                                         per_host_batch_size=max(row + 1, 2),
                                         seed=config.seed + 1, train=False, corrupt=False)))
  model = model_lib.MVPPretrainingModel(model_cfg)
  inputs = {k: jnp.asarray(v) for k, v in data.model_inputs(batch).items()}
  chosen, _ = grounding.predicted_regions(model, params, inputs)
  chosen, links = np.asarray(chosen)[row], np.asarray(batch['phrase_region_links'])[row]
  image_index = int(batch['image_index'][row])
  record = next(storage.read_dataset(directory, split).skip(image_index).take(1)
                .as_numpy_iterator())
  _, concept_vocab = storage.load_vocabularies(directory)
  start, end = (int(i) for i in batch['phrase_index'][row])
  ids = np.asarray(batch['input_ids_a'])[row]
  phrases = [(' '.join(concept_vocab.id2phrase.get(int(ids[p]), ('?',))), int(chosen[p]),
              int(links[p])) for p in range(start, end) if links[p] >= 0]
  first = int(np.load(os.path.join(directory, split, storage.CAPTIONS_FILE))[:image_index].sum())
  caption = record['captions'][int(batch['example_index'][row]) - first].decode('utf-8')
  image = np.asarray(Image.open(io.BytesIO(record['image_png'])).convert('RGB'))
  return draw_grounding(image, record['boxes'], phrases, caption)


def write_picture(workdir: str, picture: np.ndarray, step: int) -> str:
  """Saves `picture` as `{workdir}/grounding.png` and as TensorBoard image `grounding`."""
  path = os.path.join(workdir, PICTURE)
  png = io.BytesIO()
  Image.fromarray(picture).save(png, format='PNG')
  epath.Path(path).write_bytes(png.getvalue())  # workdir may be gs://
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_images(step, {'grounding': picture[None]})
  writer.close()
  return path


def report(config: ml_collections.ConfigDict, workdir: str, results: Mapping[str, float]) -> str:
  """The end-of-run text of a pre-training run: the summary, and where the picture is."""
  text = summary(results)
  if config.get('task', 'pretrain') != 'pretrain' or jax.process_index() != 0:
    return text
  model_cfg, params = api.load_checkpoint(workdir)
  picture = grounding_picture(config, data.prepare_dataset(config.data, workdir), model_cfg,
                              params)
  path = write_picture(workdir, picture, int(results.get('final_step', 0)))
  return f'{text}\nGrounding of one validation caption: {path} (TensorBoard image "grounding").'
