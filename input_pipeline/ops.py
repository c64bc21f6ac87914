"""Per-example ops, composed from a string in the config (big_vision's preprocessing strings).

  preprocess = 'unique_tags|assemble|corrupt(0.15)'

`build(spec, context)` parses the string into one callable `example -> example` that runs every
op in order, in-graph, on one unbatched example. Ops are registered by name (`@register`); an op
is a factory `(context, *args, **kwargs) -> (example -> example)` and takes its arguments as
Python literals: `corrupt(0.15)`, `assemble(tags='tags')`.

The example an op string starts from (built by `input_pipeline.processor`):
  text             string []             caption / question / hypothesis / expression
  phrases          string ragged [P, (L)] its phrase tuples
  phrase_regions   int32 [P]             grounded region of each phrase or -1
  tags             string [N]            region tags in detection order (duplicates kept)
  region_features  float32 [N, D]
  boxes            float32 [N, 4]        (x1, y1, x2, y2) pixels
  epoch, example_index  int64 []
  task fields of the example file, e.g. label int32 [], question_id int64 [],
  target_box float32 [4], labels int32 [K] / scores float32 [K] (VQA answers)
After `assemble` it also holds the model inputs of `features.MODEL_INPUT_KEYS`,
`phrase_region_links` and the internal `phrase_word_links` (removed by `corrupt` / `no_corrupt`).

Op strings of the layouts (spec §1.2), see `PRESETS`:
  pretraining, training and the fixed-seed eval corruption   unique_tags|assemble|corrupt(0.15)
  clean (retrieval/grounding evaluation, retrieval, tasks)   unique_tags|assemble|no_corrupt
  COCO retrieval (all tags, duplicates in region order)      assemble(tags='tags')|no_corrupt
  VQA      unique_tags|assemble|no_corrupt|tags_after_sep|soft_targets
  SNLI-VE  unique_tags|assemble|no_corrupt   (the example's `label` is kept as it is)
  RE       drop_phrases|unique_tags|assemble|no_corrupt|region_iou

Pixel mode (features.py; `pixel_preprocess` prefixes any of the above) reads the record's image
(`image_png`, `image_size`, `image_id`) and writes `pixels` and `region_boxes`; `assemble` then
lays out `region_boxes` as the region rows instead of `region_features`:
  training    decode_image|random_crop(scale=(0.5, 1.0))|flip_lr(0.5)|resize(64)|normalise(...)
  evaluation  decode_image|resize(64)|normalise('minus_one_to_one')
Random ops draw from (seed, stream, epoch, example_index) like `corrupt` (`example_seed`).
"""

import ast
import dataclasses
from typing import Any, Callable, Optional

import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import concepts
from input_pipeline import image_ops
from input_pipeline import masking
from input_pipeline import tokenizers

Example = dict[str, Any]
Op = Callable[[Example], Example]

PRESETS = {
    'pretrain': 'unique_tags|assemble|corrupt(0.15)',
    'clean': 'unique_tags|assemble|no_corrupt',
    'retrieval': 'unique_tags|assemble|no_corrupt',
    'tags_as_list': "assemble(tags='tags')|no_corrupt",
    'vqa': 'unique_tags|assemble|no_corrupt|tags_after_sep|soft_targets',
    've': 'unique_tags|assemble|no_corrupt',
    're': 'drop_phrases|unique_tags|assemble|no_corrupt|region_iou',
}


@dataclasses.dataclass(frozen=True)
class Context:
  """What ops may read besides the example.

  Attributes:
    tokenizer, concept_vocab: the dataset's vocabularies.
    lengths: sequence lengths of the layout.
    seed: the iterator's seed (corruption, crops and flips draw from it, the epoch and the
      example index).
    num_answers: size of the VQA answer vocabulary (0 when there is none).
  """
  tokenizer: tokenizers.Tokenizer
  concept_vocab: concepts.ConceptVocab
  lengths: assembly.Lengths
  seed: int = 0
  num_answers: int = 0


_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(name: str):
  """Registers an op factory under `name`."""
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f'op {name!r} is registered twice')
    _REGISTRY[name] = factory
    return factory
  return wrap


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
  """'a|b(1, k=2)' -> [('a', (), {}), ('b', (1,), {'k': 2})]; unknown names are errors."""
  ops = []
  for part in (p.strip() for p in spec.split('|')):
    if not part:
      raise ValueError(f'preprocess {spec!r}: empty op between "|"')
    try:
      node = ast.parse(part, mode='eval').body
      if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      else:
        raise ValueError('not a name or a call')
    except (SyntaxError, ValueError) as e:
      raise ValueError(f'preprocess {spec!r}: cannot parse op {part!r} ({e}); write '
                       "name or name(literal, key=literal)") from None
    if name not in _REGISTRY:
      raise ValueError(f'preprocess {spec!r}: unknown op {name!r}; known: {sorted(_REGISTRY)}')
    ops.append((name, args, kwargs))
  return ops


def build(spec: str, context: Context) -> Op:
  """The composed op of `spec` (see the module docstring)."""
  ops = []
  for name, args, kwargs in parse(spec):
    try:
      ops.append((name, _REGISTRY[name](context, *args, **kwargs)))
    except TypeError as e:
      raise ValueError(f'preprocess {spec!r}: bad arguments for op {name!r} ({e})') from None

  def run(example: Example) -> Example:
    for name, op in ops:
      try:
        example = op(dict(example))
      except KeyError as e:
        raise ValueError(f'preprocess {spec!r}: op {name!r} needs key {e} that the example '
                         f'does not hold (it has {sorted(example)})') from None
    return example
  return run


@register('unique_tags')
def _unique_tags(context: Context, inkey: str = 'tags', outkey: str = 'visual_tags') -> Op:
  """Region tags deduplicated in first-occurrence order (the authors use a set)."""
  del context

  def op(example):
    example[outkey] = tf.unique(example[inkey]).y
    return example
  return op


@register('drop_phrases')
def _drop_phrases(context: Context) -> Op:
  """An empty phrase list (referring expressions use no phrases)."""
  del context

  def op(example):
    example['phrases'] = example['phrases'][:0]
    example['phrase_regions'] = example['phrase_regions'][:0]
    return example
  return op


@register('assemble')
def _assemble(context: Context, tags: str = 'visual_tags') -> Op:
  """The model-input layout of text A and the visual stream; the tags of the visual stream are
  `example[tags]` as they are (after `unique_tags`: the set; 'tags': all, in region order).
  In pixel mode (the example holds `pixels`) the region rows are `region_boxes` [R, 4], written
  as `region_boxes` instead of `img_feats`."""
  assembler = assembly.ExampleAssembler(context.tokenizer, context.concept_vocab,
                                        context.lengths, assembly.LayoutOptions(tags_as_list=True))

  def op(example):
    pixels = 'pixels' in example
    rows = example['region_boxes'] if pixels else example['region_features']
    out = assembler(example['text'], example['phrases'], example['phrase_regions'],
                    example[tags], rows)
    if pixels:
      out['region_boxes'] = out.pop('img_feats')
    example.update(out)
    return example
  return op


# Random streams of example_seed; 0 is the example order (iterators.host_example_order).
STREAM_CORRUPT, STREAM_CROP, STREAM_FLIP = 1, 2, 3


def example_seed(seed: int, stream: int, example: Example) -> tf.Tensor:
  """int64 [2] stateless seed of one random stream of one example in one epoch."""
  return tf.random.experimental.stateless_fold_in(
      tf.random.experimental.stateless_fold_in(tf.constant([seed, stream], tf.int64),
                                               example['epoch']), example['example_index'])


@register('corrupt')
def _corrupt(context: Context, mask_prob: float = 0.15) -> Op:
  """MLM/MCR corruption (masking.py), seeded by (seed, epoch, example_index)."""
  corruption = masking.Corruption(context.tokenizer.mask_id, context.tokenizer.vocab_size,
                                  context.concept_vocab.num_rows, mask_prob=mask_prob)
  seed = context.seed

  def op(example):
    return corruption(example, example_seed(seed, STREAM_CORRUPT, example))
  return op


@register('decode_image')
def _decode_image(context: Context, inkey: str = 'image_png') -> Op:
  """`image` uint8 [h, w, 3] from the record's PNG/JPEG bytes (an error names the record), and
  `region_boxes` float32 [N, 4]: `boxes` normalised by the record's `image_size`."""
  del context

  def op(example):
    example['image'] = image_ops.decode(example[inkey], example['image_id'])
    example['region_boxes'] = image_ops.normalised_boxes(example['boxes'], example['image_size'])
    return example
  return op


@register('random_crop')
def _random_crop(context: Context, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                 cover: bool = True, min_size: float = 1 / 64) -> Op:
  """Random area-`scale`, aspect-`ratio` window of `image`, widened to hold the grounded boxes of
  the text and a `target_box` when `cover` (image_ops docstring); `region_boxes` follow."""
  seed = context.seed

  def op(example):
    image, boxes = example['image'], example['region_boxes']
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    cover_box = tf.constant([1.0, 1.0, 0.0, 0.0])
    if cover:
      links = tf.cast(example['phrase_regions'], tf.int32)
      linked = tf.gather(boxes, tf.boolean_mask(links, (links >= 0)
                                               & (links < tf.shape(boxes)[0])))
      if 'target_box' in example:
        target = image_ops.normalised_boxes(example['target_box'][None], example['image_size'])
        linked = tf.concat([linked, target], 0)
      cover_box = image_ops.union_box(linked)
    window = image_ops.sample_window(example_seed(seed, STREAM_CROP, example), height, width,
                                     tuple(scale), tuple(ratio), cover_box)
    example['image'], example['region_boxes'] = image_ops.crop(image, boxes, window, min_size)
    return example
  return op


@register('flip_lr')
def _flip_lr(context: Context, prob: float = 0.5, swaps=image_ops.DEFAULT_SWAPS) -> Op:
  """With probability `prob`: mirror `image` and `region_boxes`, and swap the words of each
  pair in `swaps` ('left' <-> 'right') in `text` and `phrases`. Refused for VQA, whose answers
  ('left') would not follow."""
  if context.num_answers:
    raise ValueError('flip_lr would mirror VQA images without swapping their answers; '
                     'drop it from the VQA op string.')
  seed = context.seed
  swaps = tuple(tuple(p) for p in swaps)

  def op(example):
    u = tf.random.stateless_uniform([], example_seed(seed, STREAM_FLIP, example))
    do = u < prob
    image, boxes = image_ops.flip(example['image'], example['region_boxes'])
    example['image'] = tf.cond(do, lambda: image, lambda: example['image'])
    example['region_boxes'] = tf.where(do, boxes, example['region_boxes'])
    example['text'] = tf.where(do, image_ops.swap_words(example['text'], swaps),
                               example['text'])
    words = example['phrases']
    example['phrases'] = words.with_flat_values(tf.where(
        do, image_ops.swap_words(words.flat_values, swaps), words.flat_values))
    return example
  return op


@register('resize')
def _resize(context: Context, size: int, method: str = 'bicubic') -> Op:
  """`image` resampled to float32 [size, size, 3] on [0, 255] (boxes are normalised: unchanged)."""
  del context

  def op(example):
    example['image'] = image_ops.resize(example['image'], size, method)
    return example
  return op


@register('normalise')
def _normalise(context: Context, norm='minus_one_to_one') -> Op:
  """`pixels` float32 [S, S, 3] = normalised `image` (image_ops.NORMS name or (mean, std))."""
  del context
  image_ops.normalise(tf.zeros([1, 1, 3]), norm)  # Refuses an unknown name when built.

  def op(example):
    example['pixels'] = image_ops.normalise(example.pop('image'), norm)
    return example
  return op


# Default train-time augmentation of pixel mode per task: crop + flip where the text follows the
# flip; none for VQA (answers such as 'left' would not follow, and without grounded phrases a crop
# could cut away the object a question asks about).
PIXEL_AUGMENT = {task: 'random_crop(scale=(0.5, 1.0))|flip_lr(0.5)'
                 for task in ('pretrain', 'retrieval', 've', 're')}
PIXEL_AUGMENT['vqa'] = ''


def pixel_preprocess(spec: str, *, image_size: int, image_norm='minus_one_to_one',
                     augment: str = '', resize_method: str = 'bicubic') -> str:
  """The pixel-mode op string of `spec`: decode, the `augment` ops (training: e.g.
  'random_crop(scale=(0.5, 1.0))|flip_lr(0.5)'; '' for none), resize (bicubic as PIL and the
  offline extractor; 'bilinear' costs about half on large images), normalise, then `spec`."""
  resize = (f'resize({int(image_size)})' if resize_method == 'bicubic' else
            f'resize({int(image_size)}, method={resize_method!r})')
  ops = ['decode_image'] + ([augment] if augment else []) + [
      resize, f'normalise({image_norm!r})', spec]
  return '|'.join(ops)


@register('no_corrupt')
def _no_corrupt(context: Context) -> Op:
  """Inputs unchanged, MLM labels all -1."""
  del context
  return masking.no_corruption


@register('tags_after_sep')
def _tags_after_sep(context: Context, inkey: str = 'tags') -> Op:
  """VQA text A: the pieces of every region tag (in order, duplicates kept) after [SEP], with
  segment id 1, truncated so that text A fills at most La (no final [SEP], as `run_vqa.py` does
  with `--use_b_text --b_as_list`)."""
  tokenizer, la = context.tokenizer, context.lengths.text_length

  def op(example):
    used = tf.reduce_sum(example['attention_mask_a'])
    pieces = tokenizer.tokenize(example[inkey]).flat_values
    k = tf.minimum(tf.size(pieces), la - used)
    pieces = tf.pad(pieces[:la], [[0, la - tf.minimum(tf.size(pieces), la)]])
    positions = tf.range(la)
    in_tags = (positions >= used) & (positions < used + k)
    shifted = tf.gather(pieces, tf.clip_by_value(positions - used, 0, la - 1))
    example['input_ids_a'] = tf.where(in_tags, shifted, example['input_ids_a'])
    example['attention_mask_a'] = tf.where(in_tags, 1, example['attention_mask_a'])
    example['token_type_ids_a'] = tf.where(in_tags, 1, example['token_type_ids_a'])
    return example
  return op


@register('soft_targets')
def _soft_targets(context: Context, outkey: str = 'answer_targets',
                  num_answers: Optional[int] = None) -> Op:
  """float32 [num_answers]: the example's VQA soft scores (`labels`, `scores`) made dense."""
  size = num_answers or context.num_answers
  if not size:
    raise ValueError('soft_targets needs an answer vocabulary (answers.json) or num_answers')

  def op(example):
    example[outkey] = tf.scatter_nd(tf.cast(example['labels'], tf.int32)[:, None],
                                    tf.cast(example['scores'], tf.float32), [size])
    return example
  return op


@register('region_iou')
def _region_iou(context: Context, inkey: str = 'boxes', target: str = 'target_box',
                outkey: str = 'region_iou') -> Op:
  """float32 [R]: IoU of the first R region boxes with the target box, -1 on padded regions."""
  r = context.lengths.max_img_seq_length

  def op(example):
    kept = example[inkey][:r]
    iou = box_iou(kept, example[target])
    example[outkey] = tf.ensure_shape(
        tf.pad(iou, [[0, r - tf.shape(kept)[0]]], constant_values=-1.0), [r])
    return example
  return op


def box_iou(boxes: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
  """IoU of boxes float32 [N, 4] with one box [4], all (x1, y1, x2, y2), as `run_re.py`'s
  compute_iou: continuous areas, 0 when the boxes only touch. Returns float32 [N]."""
  boxes, target = tf.cast(boxes, tf.float32), tf.cast(target, tf.float32)
  width = tf.minimum(boxes[:, 2], target[2]) - tf.maximum(boxes[:, 0], target[0])
  height = tf.minimum(boxes[:, 3], target[3]) - tf.maximum(boxes[:, 1], target[1])
  inter = tf.where((width > 0) & (height > 0), width * height, 0.0)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  union = area + (target[2] - target[0]) * (target[3] - target[1]) - inter
  return tf.math.divide_no_nan(inter, union)
