"""The one example processor of pre-training and tasks: locate, read, run the op string, pad.

An example source says what example `i` of a split is:
  `CaptionExamples`  pre-training: caption `i - first(image)` of the image holding it, counting
                     captions over the images in stored order;
  `TaskExamples`     tasks: line `i` of the split's example file (tasks/examples.py), whose
                     `image_id` must be that of the record it points to.
`ExampleProcessor` reads the records of a chunk of example indices (`read`), then per example
builds the op input (ops.py), runs the ops, adds the bookkeeping keys and returns exactly
`features.batch_keys(pixels) + batch_keys` (pixel mode: an op string that writes `pixels`).
Rows with example_index -1 pad the final evaluation batch: they read example 0 and are blanked
(example_valid 0, `features.NEGATIVE_PADDING_KEYS` -1, the rest 0).
"""

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import features
from input_pipeline import iterators
from input_pipeline import storage

# dtypes of the task-example fields that become per-example tensors (tasks/examples.py).
_DENSE_FIELDS = {'question_id': tf.int64, 'label': tf.int32, 'target_box': tf.float32}
_RAGGED_FIELDS = {'labels': np.int32, 'scores': np.float32}


class CaptionExamples:
  """Pre-training examples: every caption of every image record."""

  def __init__(self, source: storage.RecordSource):
    self.num_examples = int(source.captions_per_image.sum())
    self._ends = tf.constant(np.cumsum(source.captions_per_image), tf.int64)
    self._counts = tf.constant(source.captions_per_image, tf.int64)
    self.item_spec = {'caption_index': tf.TensorSpec([], tf.int64)}

  def locate(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    """int64 [K] example indices (>= 0) -> image_index and caption_index [K]."""
    image = tf.searchsorted(self._ends, index, side='right', out_type=tf.int64)
    caption = index - (tf.gather(self._ends, image) - tf.gather(self._counts, image))
    return {'image_index': image, 'caption_index': caption}

  def fields(self, item: Mapping[str, tf.Tensor], record: Mapping[str, Any]) -> dict:
    c = item['caption_index']
    return {'text': record['captions'][c], 'phrases': record['phrases'][c],
            'phrase_regions': tf.cast(record['phrase_regions'][c], tf.int32)}


class TaskExamples:
  """Task examples (tasks/examples.py), with their task fields as per-example tensors."""

  def __init__(self, examples: Sequence[Mapping[str, Any]]):
    ex = examples
    self.num_examples = len(ex)
    self._image_index = tf.constant([e['image_index'] for e in ex], tf.int64)
    self._image_id = tf.constant([e['image_id'] for e in ex], tf.string)
    self._text = tf.constant([e['text'] for e in ex], tf.string)
    phrases = [p for e in ex for p in e['phrases']]
    self._phrases = tf.RaggedTensor.from_nested_row_lengths(
        tf.constant([w for p in phrases for w in p], tf.string),
        [tf.constant([len(e['phrases']) for e in ex], tf.int64),
         tf.constant([len(p) for p in phrases], tf.int64)], validate=False)
    self._phrase_regions = _ragged([e['phrase_regions'] for e in ex], np.int32)
    present = set(ex[0]) if ex else set()
    self._dense = {k: tf.constant(np.asarray([e[k] for e in ex]), dtype)
                   for k, dtype in _DENSE_FIELDS.items() if k in present}
    self._ragged = {k: _ragged([e[k] for e in ex], dtype)
                    for k, dtype in _RAGGED_FIELDS.items() if k in present}
    self.item_spec = {}

  def locate(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    return {'image_index': tf.gather(self._image_index, index)}

  def fields(self, item: Mapping[str, tf.Tensor], record: Mapping[str, Any]) -> dict:
    i = tf.maximum(item['example_index'], 0)
    expected_id = tf.gather(self._image_id, i)
    check = tf.debugging.Assert(
        tf.equal(record['image_id'], expected_id),
        ['task example and image record disagree (example file out of date with the records?): '
         'example index, record image_id, example image_id:', i, record['image_id'],
         expected_id])
    with tf.control_dependencies([check]):
      text = tf.identity(tf.gather(self._text, i))
    out = {'text': text, 'phrases': self._phrases[i], 'phrase_regions': self._phrase_regions[i]}
    out.update({k: tf.gather(v, i) for k, v in self._dense.items()})
    out.update({k: v[i] for k, v in self._ragged.items()})
    return out


class ExampleProcessor:
  """`read` (a chunk of indices -> records) and `__call__` (one item -> its batch row)."""

  def __init__(self, source: storage.RecordSource, examples, op: Callable,
               batch_keys: Sequence[str] = ()):
    self._source = source
    self._examples = examples
    self._op = op
    self._batch_keys = tuple(batch_keys)
    spec = {'epoch': tf.TensorSpec([], tf.int64), 'example_index': tf.TensorSpec([], tf.int64),
            'image_index': tf.TensorSpec([], tf.int64), 'record': tf.TensorSpec([], tf.string),
            **examples.item_spec}
    # Traced once per iterator: re-making the dataset on resume then costs no new trace.
    self._process = tf.function(self._process_item, autograph=False, input_signature=[spec])

  @tf.autograph.experimental.do_not_convert
  def read(self, chunk: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """{'epoch', 'example_index'} [K] -> plus the located indices and serialized records."""
    index = tf.maximum(chunk['example_index'], 0)  # Padding rows read example 0, then blank.
    located = self._examples.locate(index)
    return {**chunk, **located, 'record': self._source.read_tf(located['image_index'])}

  @tf.autograph.experimental.do_not_convert
  def __call__(self, item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return self._process(item)

  def _process_item(self, item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    record = self._source.parse(item['record'])
    example = {'tags': record['tags'], 'region_features': record['region_features'],
               'boxes': record['boxes'], 'image_id': record['image_id'],
               'image_png': record['image_png'], 'image_size': record['image_size'],
               'epoch': item['epoch'],
               'example_index': item['example_index'],
               **self._examples.fields(item, record)}
    example = self._op(example)
    valid = item['example_index'] >= 0
    example['image_index'] = tf.cast(item['image_index'], tf.int32)
    example['example_index'] = item['example_index']
    example['example_valid'] = tf.cast(valid, tf.int32)
    keys = self.keys_for(pixels='pixels' in example)
    missing = [k for k in keys if k not in example]
    if missing:
      raise ValueError(f'the preprocess ops produced no {missing} (batch keys {keys}); '
                       'add the op that writes them.')
    return {k: iterators.blank_unless(valid, example[k],
                                      -1 if k in features.NEGATIVE_PADDING_KEYS else 0)
            for k in keys}

  def keys_for(self, pixels: bool) -> tuple[str, ...]:
    """The batch keys: `features.batch_keys(pixels)` then the task's extra keys."""
    base = features.batch_keys(pixels)
    return base + tuple(k for k in self._batch_keys if k not in base)


def _ragged(rows: list, dtype) -> tf.RaggedTensor:
  """[E, (k)] ragged constant from a list of lists, built from flat arrays (fast for large E)."""
  splits = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=splits[1:])
  flat = np.asarray([v for r in rows for v in r], dtype).reshape(-1)
  return tf.RaggedTensor.from_row_splits(tf.constant(flat), tf.constant(splits), validate=False)
