r"""Inference with a trained MVPTR: masked words, image-text matching, retrieval, phrase grounding.

  predictor = Predictor.load('/tmp/mvp_tiny')   # a run, an exported folder, any weights source
  image = predictor.shapesworld_record(3)             # or an image record, or an RGB image
  predictor.fill_mask(image, 'a red [MASK] left of a blue square')
  predictor.match_score(image, 'a red circle left of a blue square')   # P(matched)
  predictor.ground(image, 'a red circle left of a blue square')        # phrase -> region
  predictor.embed_texts([...]), predictor.embed_images([...])          # ITC embeddings

An `example` is an image record (`input_pipeline/features.py`), an int (the index of a ShapesWorld
image of the run's dataset configuration, split `val`), or an RGB image (uint8 [H, W, 3] array or
PIL image; with a vision tower also a file path) whose regions are a fixed grid and which has no
object tags: described by the deterministic extractor of `input_pipeline.region_features`, or,
for a pixel model (`config.vision`), read through the tower (`pixel_model.image_record`).
Captions are laid out exactly as in training (`input_pipeline.assembly.ExampleAssembler`, spec
§1.2); their phrases come from `input_pipeline.phrase_extractor` unless given, and phrases outside
the concept vocabulary are dropped, as the authors do. Every method takes one (example, text) pair
or lists of them (equal lengths, or one side single) and returns one result or a list.

The command line is `mvp_jax/inference_cli.py`.
"""

import dataclasses
import functools
import io
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import features
from input_pipeline import phrase_extractor
from input_pipeline import region_features
from input_pipeline import storage
from input_pipeline.shapesworld import build
from input_pipeline.shapesworld import generate
from input_pipeline.shapesworld import render

from mvp_jax import api
from mvp_jax import model as model_lib
from mvp_jax import pixel_model
from mvp_jax import run_dir
from mvp_jax import weights
from mvp_jax.config import ModelConfig

Params = Dict[str, Any]
Phrase = Tuple[str, ...]
# The MLM pipeline's lengths (spec §4.5), for folders that do not record theirs.
PIPELINE_LENGTHS = dict(max_seq_length=30, max_phrases=5, max_tag_length=20,
                        max_img_seq_length=50)
_SPECIAL_TOKEN = re.compile(r'\[[^\[\]\s]+\]|<[^<>\s]+>')
_MASK = re.compile(r'\[mask\]', re.IGNORECASE)


@functools.partial(jax.jit, static_argnames=('config',))
def _mlm_and_match(config: ModelConfig, params: Params, batch: Mapping[str, jax.Array]):
  """(MLM logits [B, La, V], ITM probabilities [B, 2] with class 0 = matched)."""
  def apply(module, batch):
    outputs = module(batch)
    return outputs['mlm_logits'], jax.nn.softmax(module.itm_head(outputs['pooled_output']))
  return model_lib.MVPPretrainingModel(config).apply({'params': params}, batch, method=apply)


@functools.partial(jax.jit, static_argnames=('config', 'side'))
def _embeddings(config: ModelConfig, params: Params, batch: Mapping[str, jax.Array], side: str):
  """L2-normalised ITC embeddings [B, H]: text ([CLS] @ txt_proj) or image ([CLS] @ vis_proj)."""
  def apply(module, batch):
    sequence = (module.encode_text if side == 'text' else module.encode_visual)(batch)
    projection = module.text_projection if side == 'text' else module.visual_projection
    return model_lib.l2_normalize(
        (sequence[:, 0] @ projection.astype(sequence.dtype)).astype(jnp.float32))
  return model_lib.MVPBackbone(config).apply({'params': params['backbone']}, batch, method=apply)


@functools.partial(jax.jit, static_argnames=('config',))
def _cross_sequence(config: ModelConfig, params: Params, batch: Mapping[str, jax.Array]):
  """Cross-modal encoder output [B, La + R, H]."""
  def apply(module, batch):
    return module(batch)['cross_sequence_output']
  return model_lib.MVPBackbone(config).apply({'params': params['backbone']}, batch, method=apply)


class Predictor:
  """A trained model with its vocabularies and sequence lengths; see the module docstring.

  Attributes:
    config: the ModelConfig.
    params: parameters of `MVPPretrainingModel` (jax arrays).
    tokenizer, concept_vocab: the dataset's vocabularies (`input_pipeline.storage`).
    lengths: `input_pipeline.assembly.Lengths` used to lay out examples.
    data_config: the run's `data` config (used to regenerate ShapesWorld images), or {}.
    batch_size: largest batch run at once (smaller requests are padded to a power of two).
    grid: grid of the fixed regions of plain RGB images.
  """

  def __init__(self, config: ModelConfig, params: Params, tokenizer, concept_vocab, lengths,
               data_config: Optional[Mapping[str, Any]] = None, batch_size: int = 32,
               grid: int = 3):
    missing = [k for k in ('backbone', 'mlm_head', 'itm_head') if k not in params]
    if missing:
      raise ValueError(f'The parameters lack {missing}: inference needs a pre-training model '
                       '(backbone, mlm_head, itm_head).')
    if lengths.text_length > config.max_position_embeddings or (
        lengths.max_tag_length > config.max_position_embeddings):
      raise ValueError(f'{lengths} exceeds max_position_embeddings '
                       f'{config.max_position_embeddings}.')
    # Inference reads the heads at every position (fill-mask), whatever the training run used.
    self.config = config.replace(prediction_positions='all')
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self.tokenizer = tokenizer
    self.concept_vocab = concept_vocab
    self.lengths = lengths
    self.data_config = dict(data_config or {})
    self.batch_size = batch_size
    self.grid = grid
    self._assemble = assembly.ExampleAssembler(tokenizer, concept_vocab, lengths)
    vocab = min(tokenizer.vocab_size, config.word_vocab_size)
    special = [i for i in range(vocab) if _SPECIAL_TOKEN.fullmatch(tokenizer.id_to_token(i))]
    special += [tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
                tokenizer.mask_id]
    self._word_bias = np.zeros([config.word_vocab_size], np.float32)
    self._word_bias[vocab:] = -np.inf  # head rows without a token
    self._word_bias[sorted(set(special))] = -np.inf

  # --- Construction ---------------------------------------------------------------------------

  @classmethod
  def load(cls, path: str, *, step: Optional[int] = None, dataset_dir: Optional[str] = None,
           **kwargs) -> 'Predictor':
    """From a run directory (its latest checkpoint unless `step`), an exported folder, or any
    pre-training checkpoint `mvp_jax.weights` reads with its vocabularies beside it.

    Vocabularies: `dataset_dir`, else the source's (the run's dataset, the folder's files).
    Lengths: the run's / exported folder's, else the MLM pipeline's (`PIPELINE_LENGTHS`).
    """
    if step is not None:
      path = os.path.join(path, run_dir.CHECKPOINTS_DIR, str(step))
    source = weights.read(path)
    config, params = api.load_checkpoint(source)
    vocab_dir = dataset_dir or source.vocab_dir
    if not vocab_dir:
      raise FileNotFoundError(f'{path} carries no vocabularies: pass dataset_dir (the folder '
                              'with vocab.txt or *.model and id2phrase.json).')
    tokenizer, concept_vocab = storage.load_vocabularies(vocab_dir)
    data = source.info.get('data') or {}
    lengths = _lengths(source.info.get('lengths') or data or PIPELINE_LENGTHS)
    return cls(config, params, tokenizer, concept_vocab, lengths, data, **kwargs)

  # --- Examples -------------------------------------------------------------------------------

  def shapesworld_record(self, index: int, split: str = 'val') -> Dict[str, Any]:
    """Image record `index` of `split` of the run's ShapesWorld configuration."""
    options = dict(self.data_config.get('shapesworld') or {})
    options.setdefault('feature_dim', self.config.region_feature_dim)
    return generate.generate_record(build.config_from_dict(options).world, split, int(index))

  def as_record(self, example) -> Dict[str, Any]:
    """An image record for an example (record, ShapesWorld index or RGB image)."""
    if isinstance(example, Mapping):
      missing = [k for k in ('region_features', 'boxes', 'tags') if k not in example]
      if missing:
        raise ValueError(f'An image record needs {missing} (see input_pipeline/features.py).')
      return dict(example)
    if isinstance(example, (int, np.integer)):
      return self.shapesworld_record(int(example))
    return self._image_record(example)

  def _image_record(self, image) -> Dict[str, Any]:
    if self.config.vision is not None:  # through the tower: the image itself, grid regions
      return pixel_model.image_record(image, self.config.vision, self.config.region_feature_dim)
    if hasattr(image, 'convert'):  # a PIL image
      image = np.asarray(image.convert('RGB'))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f'An RGB image must be uint8 [H, W, 3], got {image.dtype} {image.shape}; '
                       'pass an image record for anything else.')
    height, width = image.shape[:2]
    boxes = region_features.grid_boxes(height, width, self.grid)
    return {'image_id': 'image', 'image_png': render.encode_png(image),
            'image_size': np.array([height, width], np.int32),
            'region_features': region_features.extract_region_features(
                image, boxes, self.config.region_feature_dim),
            'boxes': boxes, 'tags': [], 'captions': [], 'phrases': [], 'phrase_regions': []}

  def phrases_of(self, text: str) -> List[Phrase]:
    """Phrase tuples of a caption (rule-based extractor), before the concept-vocab filter."""
    return [tuple(p) for p in phrase_extractor.extract_phrases(text)]

  def encode(self, examples: Sequence[Any], texts: Sequence[str],
             phrases: Optional[Sequence[Optional[Sequence[Sequence[str]]]]] = None):
    """Model inputs for (example, text) pairs.

    Returns:
      (batch of `features.MODEL_INPUT_KEYS` numpy arrays with leading dim N, records [N], the
      phrases kept in each text stream [N][P_i]).
    """
    phrases = [None] * len(texts) if phrases is None else list(phrases)
    rows, records, kept = [], [], []
    for example, text, given in zip(examples, texts, phrases):
      record = self.as_record(example)
      text = _MASK.sub('[MASK]', text)
      tuples = self.phrases_of(text) if given is None else [tuple(p) for p in given]
      known = [p for p in tuples if p in self.concept_vocab.phrase2id]
      phrase_tensor = (tf.ragged.constant([list(p) for p in tuples], dtype=tf.string)
                       if tuples else tf.RaggedTensor.from_row_lengths(
                           tf.constant([], tf.string), tf.constant([], tf.int64)))
      out = self._assemble(
          tf.constant(text), phrase_tensor, tf.fill([len(tuples)], -1),
          tf.constant(list(record['tags']), tf.string),
          tf.constant(np.asarray(record['region_features'], np.float32)))
      row = {k: out[k].numpy() for k in features.MODEL_INPUT_KEYS}
      start, end = row['phrase_index']
      kept.append(known[:end - start])
      rows.append(row)
      records.append(record)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    if self.config.vision is not None:  # the tower reads pixels and boxes, not img_feats
      batch.update(pixel_model.batch_inputs(records, batch.pop('img_feats').shape[1],
                                            self.config.vision))
    return batch, records, kept

  def _run(self, fn, batch: Dict[str, np.ndarray]):
    """Runs a jitted function in chunks of at most batch_size rows, padded to a power of two."""
    total = len(next(iter(batch.values())))
    outputs = []
    for start in range(0, total, self.batch_size):
      chunk = {k: v[start:start + self.batch_size] for k, v in batch.items()}
      n = len(next(iter(chunk.values())))
      padded = min(self.batch_size, 1 << (n - 1).bit_length())
      chunk = {k: np.concatenate([v, np.repeat(v[-1:], padded - n, axis=0)]) for k, v in
               chunk.items()}
      result = jax.device_get(fn(self.config, self.params, chunk))
      outputs.append(jax.tree_util.tree_map(lambda x, n=n: np.asarray(x)[:n], result))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)

  # --- Tasks ----------------------------------------------------------------------------------

  def fill_mask(self, examples, texts, top_k: int = 5, phrases=None):
    """Top words for each [MASK] of the text, contextualised with the image (spec §4.5).

    Returns (per pair) {'text': the text with each [MASK] replaced by its best word,
    'masks': [[(word, probability)] * top_k] per [MASK] in order}. Special tokens are excluded.
    """
    records, texts, phrases, single = _pairs(examples, texts, phrases)
    batch, _, _ = self.encode(records, texts, phrases)
    if not (batch['input_ids_a'] == self.tokenizer.mask_id).any(axis=1).all():
      raise ValueError('fill_mask needs at least one [MASK] in every text (within the first '
                       f'{self.lengths.max_seq_length - 2} word pieces).')
    logits, _ = self._run(_mlm_and_match, batch)
    results = []
    for ids, row_logits, text in zip(batch['input_ids_a'], logits, texts):
      positions = np.flatnonzero(ids == self.tokenizer.mask_id)
      # Real word columns only (the vocabulary padding columns are cut).
      scores = row_logits[positions, :self.config.word_vocab_size] + self._word_bias
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      masks = []
      for p in probs:
        best = np.argsort(-p)[:top_k]
        masks.append([(self.tokenizer.id_to_token(int(i)), float(p[i])) for i in best])
      filled = _MASK.sub('[MASK]', text)
      for candidates in masks:
        filled = filled.replace('[MASK]', candidates[0][0].removeprefix('##'), 1)
      results.append({'text': filled, 'masks': masks})
    return results[0] if single else results

  def match_score(self, examples, texts, phrases=None):
    """P(text matches image) from the ITM head (pre-training class 0 = matched); float(s)."""
    records, texts, phrases, single = _pairs(examples, texts, phrases)
    batch, _, _ = self.encode(records, texts, phrases)
    _, probs = self._run(_mlm_and_match, batch)
    scores = [float(p) for p in probs[:, 0]]
    return scores[0] if single else scores

  def embed_texts(self, texts, phrases=None) -> np.ndarray:
    """L2-normalised contrastive text embeddings float32 [N, H] (one text gives [H])."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    if phrases is not None and single:
      phrases = [phrases]
    blank = self._blank_record()
    batch, _, _ = self.encode([blank] * len(texts), texts, phrases)
    out = self._run(functools.partial(_embeddings, side='text'), batch)
    return out[0] if single else out

  def embed_images(self, examples) -> np.ndarray:
    """L2-normalised contrastive image embeddings float32 [N, H] (one example gives [H])."""
    single = _is_single_example(examples)
    examples = [examples] if single else list(examples)
    batch, _, _ = self.encode(examples, [''] * len(examples), [[]] * len(examples))
    out = self._run(functools.partial(_embeddings, side='image'), batch)
    return out[0] if single else out

  def retrieve(self, text: str, examples, top_k: int = 5) -> List[Tuple[int, float]]:
    """The `top_k` examples closest to `text` by ITC cosine: [(index, cosine)], best first."""
    images = self.embed_images(list(examples))
    scores = images @ self.embed_texts(text)
    return [(int(i), float(scores[i])) for i in np.argsort(-scores)[:top_k]]

  def ground(self, examples, texts, phrases=None):
    """Phrase -> region cosine map on the cross-modal outputs (what WPG trains, spec §2.7).

    Returns (per pair) {'phrases': [tuple] kept in the input, 'tags': region tags,
    'boxes': float32 [R', 4] boxes of the regions in the input (the first R),
    'similarity': float32 [P, R'] cosine, 'region': [int] argmax region per phrase,
    'phrase_boxes': float32 [P, 4] the box of that region}.
    """
    records, texts, phrases, single = _pairs(examples, texts, phrases)
    batch, records, kept = self.encode(records, texts, phrases)
    sequences = self._run(_cross_sequence, batch)
    results = []
    for row, record, tuples, sequence in zip(range(len(records)), records, kept, sequences):
      p0, p1 = batch['phrase_index'][row]
      r0, r1 = batch['img_index'][row]
      phrase_vectors = _normalize(sequence[p0:p1])
      region_vectors = _normalize(sequence[r0:r1])
      similarity = phrase_vectors @ region_vectors.T
      region = similarity.argmax(-1) if len(tuples) else np.zeros([0], np.int64)
      boxes = np.asarray(record['boxes'], np.float32)[:r1 - r0]
      results.append({'phrases': tuples, 'tags': list(record['tags'])[:r1 - r0], 'boxes': boxes,
                      'similarity': similarity.astype(np.float32),
                      'region': [int(r) for r in region],
                      'phrase_boxes': boxes[region].reshape(-1, 4)})
    return results[0] if single else results

  def _blank_record(self) -> Dict[str, Any]:
    return {'region_features': np.zeros([0, self.config.region_feature_dim], np.float32),
            'boxes': np.zeros([0, 4], np.float32), 'tags': []}


def _lengths(values: Mapping[str, Any]):
  names = [f.name for f in dataclasses.fields(assembly.Lengths)]
  return assembly.Lengths(**{k: int(values[k]) for k in names if k in values})


def _normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _is_single_example(example) -> bool:
  if isinstance(example, (Mapping, int, np.integer, str)) or hasattr(example, 'convert'):
    return True
  return isinstance(example, np.ndarray) and example.ndim == 3


def _pairs(examples, texts, phrases):
  """Broadcasts (examples, texts, phrases) to equal-length lists; also says if both were single."""
  single_example, single_text = _is_single_example(examples), isinstance(texts, str)
  examples = [examples] if single_example else list(examples)
  texts = [texts] if single_text else list(texts)
  if phrases is not None and single_text:
    phrases = [phrases]
  n = max(len(examples), len(texts))
  if len(examples) == 1:
    examples = examples * n
  if len(texts) == 1:
    texts = texts * n
  if len(examples) != len(texts) or (phrases is not None and len(phrases) != n):
    raise ValueError(f'Got {len(examples)} examples, {len(texts)} texts and '
                     f'{"no" if phrases is None else len(phrases)} phrase lists; give equal '
                     'numbers or a single example / text.')
  if not n:
    raise ValueError('Nothing to run: no examples and no texts.')
  return examples, texts, phrases, single_example and single_text


def record_image(record: Mapping[str, Any]):
  """The PIL image of a record (decoded `image_png`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not record.get('image_png'):
    raise ValueError(f'Record {record.get("image_id")!r} has no image (features only).')
  return Image.open(io.BytesIO(record['image_png'])).convert('RGB')


def draw_boxes(record: Mapping[str, Any], boxes, labels: Sequence[str], scale: int = 4):
  """The record's image enlarged `scale` times with labelled boxes [N, 4] (x1, y1, x2, y2)."""
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  image = record_image(record)
  image = image.resize((image.width * scale, image.height * scale), resample=0)
  draw = ImageDraw.Draw(image)
  palette = ['#ff00ff', '#00ffff', '#ffff00', '#ff8000', '#00ff00', '#ffffff', '#ff0000']
  for i, (box, label) in enumerate(zip(np.asarray(boxes, np.float32).reshape(-1, 4), labels)):
    colour = palette[i % len(palette)]
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=2)
    draw.text((x1 + 3, y1 + 2 + 10 * (i % 3)), label, fill=colour)
  return image
