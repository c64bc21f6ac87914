"""The downstream-task input pipeline: task examples + image records -> batches (numpy).

The order, sharding, padding and resume semantics are those of the pre-training pipeline
(`input_pipeline.pretraining`): example `i` of a split is line `i` of its example file; per epoch
the example order is a permutation seeded by (seed, epoch) (stored order without shuffle), host h
takes positions h, h + H, ...; training drops the remainder (every host gets
floor(E / H) // batch_size batches), `pad_final_batch` keeps every example and pads every host to
ceil(ceil(E / H) / batch_size) batches with rows whose `example_valid` is 0. Nothing is random
besides the order, and the state of the returned `ResumableIterator` is its (epoch, batch).

Every batch holds the keys of `features.BATCH_KEYS` (no corruption: `mlm_labels_*` are all -1)
and the task's keys (B = per-host batch, R = max_img_seq_length):
  vqa  answer_targets  float32 [B, num_answers]  VQA soft scores (0 on padding rows)
       question_id     int64 [B]                 (-1 on padding rows)
  ve   label           int32 [B]                 0 contradiction, 1 neutral, 2 entailment (-1 pad)
  re   region_iou      float32 [B, R]            IoU of each kept region box with the target box,
                                                 -1 on padded regions (and padding rows)
       target_box      float32 [B, 4]            (x1, y1, x2, y2) pixels (0 on padding rows)
`image_index` is the image's record index in the split (it groups the captions of an image for
retrieval).

Layouts (spec §1.2): text A is [CLS] words phrases [SEP] as in pre-training, with phrases from the
example; 're' forces the phrase list empty; 'vqa' appends after [SEP] every region tag in detection
order, duplicates kept, with segment id 1, truncated so that text A fills at most La (no final
[SEP], as `run_vqa.py` does with `--use_b_text --b_as_list`). The visual stream holds the
deduplicated tags (the set), or all tags with `tags_as_list` (COCO retrieval).
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import features
from input_pipeline import iterators
from input_pipeline import masking
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.tasks import examples as examples_lib

Lengths = assembly.Lengths
load_task_info = examples_lib.load_task_info

# Spec §1.2 length table (Flickr retrieval; COCO retrieval trains with max_tag_length 30).
DEFAULT_LENGTHS = {
    'retrieval': Lengths(max_seq_length=50, max_phrases=5, max_tag_length=20,
                         max_img_seq_length=50),
    'vqa': Lengths(max_seq_length=128, max_phrases=5, max_tag_length=30, max_img_seq_length=50),
    've': Lengths(max_seq_length=70, max_phrases=5, max_tag_length=20, max_img_seq_length=70),
    're': Lengths(max_seq_length=30, max_phrases=5, max_tag_length=20, max_img_seq_length=50),
}
TASK_BATCH_KEYS = {'retrieval': (), 'vqa': ('answer_targets', 'question_id'), 've': ('label',),
                   're': ('region_iou', 'target_box')}
_NEGATIVE_PADDING = ('mlm_labels_a', 'mlm_labels_b', 'phrase_region_links', 'image_index',
                     'example_index', 'question_id', 'label', 'region_iou')


def batch_keys(task: str) -> tuple[str, ...]:
  """The keys of a batch of `task`."""
  return features.BATCH_KEYS + TASK_BATCH_KEYS[task]


def create_task_iterator(
    directory: str, task: str, split: str, *, lengths: Optional[Lengths] = None,
    batch_size: int, seed: int, shuffle: bool, repeat: bool, pad_final_batch: bool,
    process_index: Optional[int] = None, process_count: Optional[int] = None,
    tags_as_list: bool = False, num_parallel_calls=tf.data.AUTOTUNE,
) -> iterators.ResumableIterator:
  """Batches of `batch_keys(task)` (numpy) for this host; see the module docstring.

  Args:
    directory, split: a task dataset written by `examples.write_task_split`.
    task: the dataset's task (checked against task.json).
    lengths: sequence lengths (default: DEFAULT_LENGTHS[task]).
    batch_size: per-host batch.
    seed: seeds the example order.
    shuffle: reshuffle every epoch; otherwise stored order.
    repeat: run over epochs forever; otherwise stop after one epoch.
    pad_final_batch: keep every example, padding the last batches (evaluation).
    process_index, process_count: this host and the number of hosts (default: jax's).
    tags_as_list: visual-stream tags with duplicates in region order (COCO retrieval).
    num_parallel_calls: parallelism of the per-example work.
  """
  if task not in examples_lib.TASKS:
    raise ValueError(f'Unknown task {task!r}; expected one of {examples_lib.TASKS}.')
  lengths = lengths or DEFAULT_LENGTHS[task]
  process_index, process_count = iterators.resolve_hosts(process_index, process_count)
  info, task_examples = examples_lib.read_examples(directory, split)
  if info.task != task:
    raise ValueError(f'{directory}: a {info.task!r} dataset, not {task!r}.')
  source = storage.RecordSource(directory, split)
  if source.num_images != info.splits[split]['num_images']:
    raise examples_lib.TaskDataError(
        f'{directory}/{split}: {source.num_images} image records, task.json says '
        f'{info.splits[split]["num_images"]}.')
  num_examples = len(task_examples)
  batches_per_epoch = iterators.batches_per_epoch(num_examples, process_count, batch_size,
                                                  pad_final_batch, f'{directory}/{split}')
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  layout = assembly.LayoutOptions(use_phrases=task != 're', tags_as_list=tags_as_list)
  process = _TaskProcessor(task, info, task_examples, source,
                           assembly.ExampleAssembler(tokenizer, concept_vocab, lengths, layout),
                           lengths)

  def make_dataset(start_epoch: int, start_batch: int) -> tf.data.Dataset:
    def epoch_indices(epoch):
      host = pretraining.host_example_order(
          epoch, num_examples=num_examples, seed=seed, shuffle=shuffle,
          process_index=process_index, process_count=process_count,
          num_rows=batches_per_epoch * batch_size)
      start = tf.where(epoch == start_epoch, start_batch * batch_size, 0)
      return tf.data.Dataset.from_tensor_slices(host[tf.cast(start, tf.int32):])

    return iterators.epochs_to_batches(epoch_indices, start_epoch, repeat, process.read, process,
                                       batch_size, num_parallel_calls)

  fingerprint = {'task': task, 'seed': seed, 'shuffle': shuffle, 'num_examples': num_examples,
                 'batch_size': batch_size, 'process_index': process_index,
                 'process_count': process_count, 'pad_final_batch': pad_final_batch}
  return iterators.ResumableIterator(make_dataset, batches_per_epoch=batches_per_epoch,
                                     fingerprint=fingerprint)


def _ragged(rows: list, dtype) -> tf.RaggedTensor:
  """[E, (k)] ragged constant from a list of lists, built from flat arrays (fast for large E)."""
  splits = np.zeros(len(rows) + 1, np.int64)
  np.cumsum([len(r) for r in rows], out=splits[1:])
  flat = np.asarray([v for r in rows for v in r], dtype).reshape(-1)
  return tf.RaggedTensor.from_row_splits(tf.constant(flat), tf.constant(splits), validate=False)


class _TaskProcessor:
  """In-graph per-example work: look up the example, read its image, assemble, add task fields."""

  def __init__(self, task, info, task_examples, source, assemble, lengths):
    self._task = task
    self._source = source
    self._assemble = assemble
    self._lengths = lengths
    self._tokenizer = assemble.tokenizer
    self._num_answers = info.num_answers
    ex = task_examples
    self._image_index = tf.constant([e['image_index'] for e in ex], tf.int64)
    self._image_id = tf.constant([e['image_id'] for e in ex], tf.string)
    self._text = tf.constant([e['text'] for e in ex], tf.string)
    phrases = [p for e in ex for p in e['phrases']]
    self._phrases = tf.RaggedTensor.from_nested_row_lengths(
        tf.constant([w for p in phrases for w in p], tf.string),
        [tf.constant([len(e['phrases']) for e in ex], tf.int64),
         tf.constant([len(p) for p in phrases], tf.int64)], validate=False)
    self._phrase_regions = _ragged([e['phrase_regions'] for e in ex], np.int32)
    if task == 'vqa':
      self._question_id = tf.constant([e['question_id'] for e in ex], tf.int64)
      self._labels = _ragged([e['labels'] for e in ex], np.int32)
      self._scores = _ragged([e['scores'] for e in ex], np.float32)
    elif task == 've':
      self._label = tf.constant([e['label'] for e in ex], tf.int32)
    elif task == 're':
      self._target_box = tf.constant(np.asarray([e['target_box'] for e in ex], np.float32))
    # Traced once per iterator: re-making the dataset on resume then costs no new trace.
    self._process = tf.function(self._process_item, autograph=False, input_signature=[{
        'example_index': tf.TensorSpec([], tf.int64), 'image_index': tf.TensorSpec([], tf.int64),
        'record': tf.TensorSpec([], tf.string)}])

  @tf.autograph.experimental.do_not_convert
  def read(self, example_index: tf.Tensor) -> dict[str, tf.Tensor]:
    """int64 [K] example indices -> their image index and serialized image record."""
    index = tf.maximum(example_index, 0)  # Padding rows read example 0, then are blanked.
    image = tf.gather(self._image_index, index)
    return {'example_index': example_index, 'image_index': image,
            'record': self._source.read_tf(image)}

  @tf.autograph.experimental.do_not_convert
  def __call__(self, item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """One example of `read`'s output -> its batch row (keys of `batch_keys(task)`)."""
    return self._process(item)

  def _process_item(self, item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    record = self._source.parse(item['record'])
    i = tf.maximum(item['example_index'], 0)
    expected_id = tf.gather(self._image_id, i)
    check = tf.debugging.Assert(
        tf.equal(record['image_id'], expected_id),
        ['task example and image record disagree (example file out of date with the records?): '
         'example index, record image_id, example image_id:', i, record['image_id'],
         expected_id])
    with tf.control_dependencies([check]):
      text = tf.identity(tf.gather(self._text, i))
    example = self._assemble(text, self._phrases[i], self._phrase_regions[i], record['tags'],
                             record['region_features'])
    example = masking.no_corruption(example)
    if self._task == 'vqa':
      example.update(self._tags_after_sep(example, record['tags']))
      labels = self._labels[i]
      example['answer_targets'] = tf.scatter_nd(labels[:, None], self._scores[i],
                                                [self._num_answers])
      example['question_id'] = tf.gather(self._question_id, i)
    elif self._task == 've':
      example['label'] = tf.gather(self._label, i)
    elif self._task == 're':
      target = tf.gather(self._target_box, i)
      example['target_box'] = target
      example['region_iou'] = self._region_iou(record['boxes'], target)
    valid = item['example_index'] >= 0
    example['image_index'] = tf.cast(item['image_index'], tf.int32)
    example['example_index'] = item['example_index']
    example['example_valid'] = tf.cast(valid, tf.int32)
    return {k: iterators.blank_unless(valid, example[k], -1 if k in _NEGATIVE_PADDING else 0)
            for k in batch_keys(self._task)}

  def _tags_after_sep(self, example: dict[str, tf.Tensor],
                      tags: tf.Tensor) -> dict[str, tf.Tensor]:
    """VQA text A: the tag pieces (all regions, in order) after [SEP], segment 1, up to La."""
    la = self._lengths.text_length
    used = tf.reduce_sum(example['attention_mask_a'])
    pieces = self._tokenizer.tokenize(tags).flat_values
    k = tf.minimum(tf.size(pieces), la - used)
    pieces = tf.pad(pieces[:la], [[0, la - tf.minimum(tf.size(pieces), la)]])
    positions = tf.range(la)
    in_tags = (positions >= used) & (positions < used + k)
    shifted = tf.gather(pieces, tf.clip_by_value(positions - used, 0, la - 1))
    return {
        'input_ids_a': tf.where(in_tags, shifted, example['input_ids_a']),
        'attention_mask_a': tf.where(in_tags, 1, example['attention_mask_a']),
        'token_type_ids_a': tf.where(in_tags, 1, example['token_type_ids_a']),
    }

  def _region_iou(self, boxes: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """float32 [R]: IoU of the first R boxes with `target`, -1 on padded regions."""
    r = self._lengths.max_img_seq_length
    kept = boxes[:r]
    return tf.ensure_shape(tf.pad(box_iou(kept, target), [[0, r - tf.shape(kept)[0]]],
                                  constant_values=-1.0), [r])


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
