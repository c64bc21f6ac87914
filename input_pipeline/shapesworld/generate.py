"""Public API of ShapesWorld: image records (input_pipeline/features.py) and downstream examples.

Every example is a pure function of (config.seed, split, index): its random numbers come from
`np.random.default_rng([seed, split id, index, stream])`, so any example can be regenerated alone
and the splits are disjoint by construction.

In 'val' and 'test', consecutive images form groups of `near_duplicate_group_size` near-duplicate
scenes: image 0 of a group is a 2-4 shape scene and each other image changes one compositional
fact of it (swap two colours, swap two kinds, swap two positions, mirror, recolour one shape; see
scenes.perturb_scene). Swapped colours or kinds leave the bag of words of the scene unchanged, so
retrieval within a group needs binding and relations, not word matching.

Regions, as a detector would give them: one box per shape (its rendered extent, jittered by up to
`box_jitter` pixels), the whole image, and `num_background_boxes` random boxes. Object regions are
tagged with their kind ('circle'); the whole-image and random boxes are tagged 'background'. Tags
never name colours. The region order is shuffled so that the region index carries no label.
"""

import dataclasses
from typing import Iterator, Optional

import numpy as np

from input_pipeline import region_features
from input_pipeline.shapesworld import downstream
from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import render
from input_pipeline.shapesworld import scenes

SPLITS = ('train', 'val', 'test')
BACKGROUND_TAG = 'background'
_GROUPED_SPLITS = ('val', 'test')
# Random streams: one per image record (train scene, then regions, then captions), two per group
# of near-duplicates, one per image and downstream task.
_STREAM_RECORD, _STREAM_GROUP_SCENE, _STREAM_GROUP_VARIANTS = 0, 1, 2
_STREAM_TASK = {'vqa': 10, 've': 11, 're': 12}


@dataclasses.dataclass(frozen=True)
class ShapesWorldConfig:
  """Options of ShapesWorld generation.

  Attributes:
    image_size: side of the square images in pixels (>= 32).
    max_objects: at most this many shapes per image (1..6).
    captions_per_image: captions per record (a one-shape scene may give fewer when the templates
      run out of distinct sentences).
    feature_dim: width of a region feature row (2054 = VinVL; >= 7).
    seed: global seed; different seeds give different datasets.
    num_background_boxes: random extra boxes per image, tagged 'background'.
    box_jitter: maximum displacement in pixels of each coordinate of a shape's box.
    shuffle_regions: shuffle the region order (else shapes, whole image, random boxes).
    near_duplicate_group_size: images per group of near-duplicate scenes in val and test (1 = no
      groups).
    questions_per_image / hypotheses_per_image / expressions_per_image: downstream examples per
      image for 'vqa' / 've' / 're'.
    png_level: zlib level of the stored PNG.
  """
  image_size: int = 64
  max_objects: int = 4
  captions_per_image: int = 5
  feature_dim: int = 2054
  seed: int = 0
  num_background_boxes: int = 2
  box_jitter: float = 1.0
  shuffle_regions: bool = True
  near_duplicate_group_size: int = 4
  questions_per_image: int = 4
  hypotheses_per_image: int = 3
  expressions_per_image: int = 2
  png_level: int = 1

  def __post_init__(self):
    if self.image_size < scenes.MIN_IMAGE_SIZE:
      raise ValueError(f'image_size must be >= {scenes.MIN_IMAGE_SIZE}, got {self.image_size}.')
    if not 1 <= self.max_objects <= 6:
      raise ValueError(f'max_objects must be in 1..6, got {self.max_objects}.')
    if self.feature_dim < 7:
      raise ValueError(f'feature_dim must be >= 7, got {self.feature_dim}.')
    if self.captions_per_image < 1 or self.near_duplicate_group_size < 1:
      raise ValueError('captions_per_image and near_duplicate_group_size must be >= 1.')


def _rng(config: ShapesWorldConfig, split: str, index: int, stream: int) -> np.random.Generator:
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected one of {SPLITS}.')
  if index < 0:
    raise ValueError(f'index must be >= 0, got {index}.')
  return np.random.default_rng([config.seed, SPLITS.index(split), index, stream])


def image_id(split: str, index: int) -> str:
  return f'shapesworld-{split}-{index:08d}'


def near_duplicate_group(config: ShapesWorldConfig, split: str, index: int) -> Optional[int]:
  """Index of the near-duplicate group of an image, or None for a split without groups."""
  if split not in _GROUPED_SPLITS or config.near_duplicate_group_size == 1:
    return None
  return index // config.near_duplicate_group_size


def generate_scene(config: ShapesWorldConfig, split: str, index: int,
                   record_rng: Optional[np.random.Generator] = None) -> tuple:
  """The scene of image `index` and how it differs from its group's first scene.

  Args:
    config, split, index: which image.
    record_rng: the image's record stream, when the caller goes on drawing from it.
  Returns:
    (scene, change) with change None outside groups, 'original' for the first image of a group,
    else a kind of change of scenes.perturb_scene.
  """
  group = near_duplicate_group(config, split, index)
  if group is None:
    rng = record_rng if record_rng is not None else _rng(config, split, index, _STREAM_RECORD)
    return scenes.sample_scene(rng, config.image_size, config.max_objects), None
  size = config.near_duplicate_group_size
  base = scenes.sample_scene(_rng(config, split, group, _STREAM_GROUP_SCENE), config.image_size,
                             config.max_objects, min_objects=min(2, config.max_objects))
  variant = index % size
  if variant == 0:
    return base, 'original'
  rng = _rng(config, split, group, _STREAM_GROUP_VARIANTS)
  seen, changes = [base.objects], []
  for _ in range(variant):  # drawn in order so that a group's scenes and changes all differ
    for _ in range(16):
      scene, change = scenes.perturb_scene(base, rng, config.image_size, avoid=changes)
      if scene.objects not in seen:
        break
    seen.append(scene.objects)
    changes.append(change)
  return scene, change


def _regions(config: ShapesWorldConfig, rng: np.random.Generator, extents: np.ndarray) -> tuple:
  """All boxes float32 [N, 4] (shapes, whole image, random boxes) and the region order [N]."""
  s = float(config.image_size)
  n_obj, n_bg = extents.shape[0], config.num_background_boxes
  u = rng.random((n_obj + n_bg, 4))
  jitter = (2 * u[:n_obj] - 1) * config.box_jitter
  boxes = np.clip(extents + jitter, 0.0, s)
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)  # never empty after jitter
  sizes = s * (0.2 + 0.4 * u[n_obj:n_obj + n_bg, 2:])
  corners = (s - sizes) * u[n_obj:n_obj + n_bg, :2]
  all_boxes = np.concatenate([boxes, [[0.0, 0.0, s, s]], np.concatenate(
      [corners, corners + sizes], axis=1)]).astype(np.float32)
  all_boxes = np.minimum(all_boxes, s)
  if config.shuffle_regions:
    return all_boxes, rng.permutation(len(all_boxes))
  return all_boxes, np.arange(len(all_boxes))


def _scene_image_regions(config: ShapesWorldConfig, split: str, index: int) -> tuple:
  """(scene, image uint8 [S, S, 3], boxes float32 [N, 4], tags, region index of each shape, the
  record's random stream)."""
  rng = _rng(config, split, index, _STREAM_RECORD)
  scene, _ = generate_scene(config, split, index, rng)
  image, extents = render.render_scene(scene, config.image_size)
  boxes, order = _regions(config, rng, extents)
  kinds = [o.kind for o in scene.objects]
  tags_in_order = kinds + [BACKGROUND_TAG] * (len(boxes) - len(kinds))
  position = np.empty(len(order), np.int64)
  position[order] = np.arange(len(order))  # region slot of each unshuffled box
  tags = [tags_in_order[k] for k in order]
  return scene, image, boxes[order], tags, position[:len(kinds)].tolist(), rng


def generate_record(config: ShapesWorldConfig, split: str, index: int) -> dict:
  """The image record (input_pipeline/features.py) of image `index` of `split`."""
  scene, image, boxes, tags, object_regions, rng = _scene_image_regions(config, split, index)
  captions, tuples, links = language.make_captions(scene, rng, config.captions_per_image)
  return {
      'image_id': image_id(split, index),
      'image_png': render.encode_png(image, config.png_level),
      'image_size': np.array([config.image_size, config.image_size], np.int32),
      'region_features': region_features.extract_region_features(image, boxes,
                                                                 config.feature_dim),
      'boxes': boxes,
      'tags': tags,
      'captions': captions,
      'phrases': tuples,
      'phrase_regions': [[object_regions[k] if k >= 0 else -1 for k in caption_links]
                         for caption_links in links],
  }


def generate_records(config: ShapesWorldConfig, split: str, num_images: int,
                     start: int = 0) -> Iterator[dict]:
  """Records of images start .. start + num_images - 1."""
  for index in range(start, start + num_images):
    yield generate_record(config, split, index)


def generate_downstream(config: ShapesWorldConfig, split: str, index: int, task: str) -> list:
  """Downstream examples on image `index` (whose record is generate_record(config, split, index)).

  task 'vqa': [{image_id, question, answers: [(answer, 1.0)]}]
  task 've':  [{image_id, hypothesis, label in ('entailment', 'neutral', 'contradiction')}]
  task 're':  [{image_id, expression, target_region: int, target_box: float32 [4]}]
  """
  if task not in _STREAM_TASK:
    raise ValueError(f'Unknown task {task!r}; expected one of {tuple(_STREAM_TASK)}.')
  rng = _rng(config, split, index, _STREAM_TASK[task])
  name = image_id(split, index)
  if task == 'vqa':
    scene, _ = generate_scene(config, split, index)
    return [{'image_id': name, 'question': q, 'answers': [(a, 1.0)]}
            for q, a in downstream.vqa_examples(scene, rng, config.questions_per_image)]
  if task == 've':
    scene, _ = generate_scene(config, split, index)
    return [{'image_id': name, 'hypothesis': h, 'label': label}
            for h, label in downstream.entailment_examples(scene, rng,
                                                           config.hypotheses_per_image)]
  scene, _, boxes, _, object_regions, _ = _scene_image_regions(config, split, index)
  out = []
  for expression, obj in downstream.referring_examples(scene, rng, config.expressions_per_image):
    region = object_regions[obj]
    out.append({'image_id': name, 'expression': expression, 'target_region': region,
                'target_box': boxes[region].copy()})
  return out


def vqa_answers() -> list:
  """Every VQA answer string, sorted (the answer vocabulary of a classifier head)."""
  counts = [str(n) for n in range(7)]
  return sorted(set(['yes', 'no'] + list(scenes.COLOUR_NAMES) + list(scenes.KINDS) + counts +
                    list(downstream.WHERE_ANSWERS.values())))


def word_list() -> list:
  """Every token a caption, question, hypothesis, expression or region tag can contain, sorted.

  Tokens are lower-case words and punctuation marks split as by language.tokenize.
  """
  texts = list(language.CAPTION_TEMPLATES.values())
  for table in (downstream.VQA_TEMPLATES, downstream.CONTRADICTION_TEMPLATES,
                downstream.NEUTRAL_TEMPLATES, downstream.RE_TEMPLATES):
    texts += table.values()
  texts = [t.replace('{', ' {').replace('}', '} ') for t in texts]
  words = set()
  for text in texts:
    words.update(w for w in language.tokenize(' '.join(
        part for part in text.split() if not part.startswith('{'))))
  words.update(['a', 'an', ',', 'object', BACKGROUND_TAG, 'left', 'right'] + list(scenes.KINDS) +
               list(scenes.PLURAL_KINDS.values()) + list(scenes.COLOUR_NAMES) +
               list(language.NUMBER_WORDS) + list(downstream.MATERIALS) +
               list(downstream.MOTIONS) + list(downstream.PROPERTIES) + ['top', 'bottom'])
  for synonyms in list(language.SIZE_WORDS.values()) + list(language.RELATION_WORDS.values()):
    for phrase in synonyms:
      words.update(phrase.split())
  return sorted(words)
