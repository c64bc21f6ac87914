"""The downstream-task input pipeline: task examples + image records -> batches (numpy).

Example `i` of a split is line `i` of its example file (tasks/examples.py). Order, host
sharding, padding and resume are those of the pre-training pipeline
(`iterators.example_iterator`); nothing is random besides the order. Each example is laid out by
the op string `preprocess` (ops.py) that the caller gives (the trainer's task registry), and a
batch holds `features.BATCH_KEYS` plus the caller's `batch_keys`. The pipeline itself never
looks at the task's name; the op strings and keys that reproduce the authors' layouts
(spec §1.2; B = per-host batch, R = max_img_seq_length):
  retrieval  ops.PRESETS['retrieval'] (COCO: ops.PRESETS['tags_as_list']), batch_keys ()
  vqa        ops.PRESETS['vqa'], batch_keys ('answer_targets', 'question_id')
             answer_targets float32 [B, num_answers] soft scores; question_id int64 [B]
  ve         ops.PRESETS['ve'], batch_keys ('label',)
             label int32 [B]: 0 contradiction, 1 neutral, 2 entailment
  re         ops.PRESETS['re'], batch_keys ('region_iou', 'target_box')
             region_iou float32 [B, R] (-1 on padded regions); target_box float32 [B, 4]
Padding rows hold -1 in `features.NEGATIVE_PADDING_KEYS` (question_id, label, region_iou, ...)
and 0 elsewhere. `image_index` is the image's record index in the split (it groups the captions
of an image for retrieval).
"""

from typing import Optional, Sequence

import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import features
from input_pipeline import iterators
from input_pipeline import ops
from input_pipeline import processor
from input_pipeline import storage
from input_pipeline.tasks import examples as examples_lib

Lengths = assembly.Lengths
load_task_info = examples_lib.load_task_info
box_iou = ops.box_iou


def create_task_iterator(
    directory: str, task: str, split: str, *, lengths: Lengths, batch_size: int, seed: int,
    shuffle: bool, repeat: bool, pad_final_batch: bool,
    preprocess: str = ops.PRESETS['retrieval'], batch_keys: Sequence[str] = (),
    process_index: Optional[int] = None, process_count: Optional[int] = None,
    num_parallel_calls=tf.data.AUTOTUNE,
) -> iterators.ResumableIterator:
  """Batches of `features.BATCH_KEYS + batch_keys` (numpy) for this host; see the module doc.

  Args:
    directory, split: a task dataset written by `examples.write_task_split`.
    task: the dataset's task, checked against task.json (nothing else depends on it).
    lengths: sequence lengths.
    batch_size: per-host batch.
    seed: seeds the example order.
    shuffle: reshuffle every epoch; otherwise stored order.
    repeat: run over epochs forever; otherwise stop after one epoch.
    pad_final_batch: keep every example, padding the last batches (evaluation).
    preprocess: op string (ops.py); default the clean retrieval layout.
    batch_keys: keys the batch holds besides `features.BATCH_KEYS`; default none.
    process_index, process_count: this host and the number of hosts (default: jax's).
    num_parallel_calls: parallelism of the per-example work.
  """
  info, task_examples = examples_lib.read_examples(directory, split)
  if info.task != task:
    raise ValueError(f'{directory}: a {info.task!r} dataset, not {task!r}.')
  source = storage.RecordSource(directory, split)
  if source.num_images != info.splits[split]['num_images']:
    raise examples_lib.TaskDataError(
        f'{directory}/{split}: {source.num_images} image records, task.json says '
        f'{info.splits[split]["num_images"]}.')
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  context = ops.Context(tokenizer, concept_vocab, lengths, seed=seed,
                        num_answers=info.num_answers)
  examples = processor.TaskExamples(task_examples)
  process = processor.ExampleProcessor(source, examples, ops.build(preprocess, context),
                                       batch_keys)
  return iterators.example_iterator(
      process, examples.num_examples, batch_size=batch_size, seed=seed, shuffle=shuffle,
      repeat=repeat, pad_final_batch=pad_final_batch, process_index=process_index,
      process_count=process_count, num_parallel_calls=num_parallel_calls,
      where=f'{directory}/{split}', fingerprint={'task': task})


def batch_keys(extra: Sequence[str] = ()) -> tuple[str, ...]:
  """The keys of a batch: `features.BATCH_KEYS` then `extra`."""
  return tuple(features.BATCH_KEYS) + tuple(k for k in extra if k not in features.BATCH_KEYS)
