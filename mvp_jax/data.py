"""Glue between the trainer and `input_pipeline`: datasets on disk, iterators, global arrays.

  directory = data.prepare_dataset(config.data, workdir, task='pretrain')
  data.check_splits(config.data, directory, ['train', 'val'])        # before step 0
  it = data.create_iterator(config.data, directory, 'train', task='pretrain',
                            per_host_batch_size=..., seed=..., train=True, corrupt=True)

A dataset's kind is read from the dataset, never guessed from the config: a folder that already
holds a dataset is used as it is (a VinVL import stays a VinVL import whatever `data.kind`
says), and ShapesWorld is generated only into a missing or empty folder, or one it generated.
"""

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
import ml_collections
import numpy as np
from absl import logging

from input_pipeline import ops
from input_pipeline import ownership
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.shapesworld import build
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators
from input_pipeline.tasks import shapesworld_tasks

COMPLETE_MARKER = 'dataset_info.json'
TASKS = ('pretrain',) + examples_lib.TASKS

# Default op string (input_pipeline/ops.py) and extra batch keys of each task; the trainer's
# task registry may pass its own (`preprocess=`, `batch_keys=`), and `data.preprocess` in the
# config overrides both (e.g. ops.PRESETS['tags_as_list'] for COCO retrieval).
PIPELINES = {
    'retrieval': (ops.PRESETS['retrieval'], ()),
    'vqa': (ops.PRESETS['vqa'], ('answer_targets', 'question_id')),
    've': (ops.PRESETS['ve'], ('label',)),
    're': (ops.PRESETS['re'], ('region_iou', 'target_box')),
}


class DataError(ValueError):
  """A dataset the run cannot use; the message names the folder, split and the fix."""


def lengths(data_config: ml_collections.ConfigDict) -> pretraining.Lengths:
  return pretraining.Lengths(max_seq_length=data_config.max_seq_length,
                             max_phrases=data_config.max_phrases,
                             max_tag_length=data_config.max_tag_length,
                             max_img_seq_length=data_config.max_img_seq_length)


def dataset_kind(directory: str) -> Optional[str]:
  """'shapesworld', 'records' (image records: a VinVL import, ...), 'task' or None (no dataset),
  read from the folder."""
  if not os.path.isdir(directory) or not os.listdir(directory):
    return None
  if os.path.exists(os.path.join(directory, examples_lib.TASK_FILE)):
    return 'task'
  if ownership.owner(directory) == 'shapesworld':
    return 'shapesworld'
  if os.path.exists(os.path.join(directory, storage.METADATA_FILE)):
    return 'records'
  return None


def prepare_dataset(data_config: ml_collections.ConfigDict, workdir: str,
                    task: str = 'pretrain') -> str:
  """Returns the dataset directory of `task`, generating ShapesWorld there when it is needed.

  `data.directory` (default `<workdir>/shapesworld` for pre-training, `<workdir>/shapesworld_
  <task>` for tasks) is used as it is when it holds a dataset. Otherwise `kind='shapesworld'`
  generates it (pre-training from `data.shapesworld`; tasks on the vocabulary of
  `data.pretraining_dir`), and `kind='records'` is an error naming the importer to run.
  """
  if task not in TASKS:
    raise ValueError(f'Unknown task {task!r}; expected one of {TASKS}.')
  default = 'shapesworld' if task == 'pretrain' else f'shapesworld_{task}'
  directory = data_config.get('directory') or os.path.join(workdir, default)
  if data_config.kind not in ('shapesworld', 'records'):
    raise ValueError(f"Unknown data.kind {data_config.kind!r}: 'shapesworld' or 'records'.")
  kind = dataset_kind(directory)
  generated = ownership.owner(directory) in ('shapesworld', 'shapesworld_tasks')
  if kind is not None and not (generated and data_config.kind == 'shapesworld'):
    if kind == 'shapesworld' or generated:
      kind = 'shapesworld'
    if kind != data_config.kind:
      logging.info('data.directory %s holds a %r dataset; data.kind=%r is not used.',
                   directory, kind, data_config.kind)
    return directory
  if data_config.kind == 'records':
    importer = 'import_vinvl' if task == 'pretrain' else 'tasks.<vqa|snli_ve|refcoco|custom>'
    raise FileNotFoundError(f'data.directory {directory!r} holds no dataset; write it first '
                            f'with `python -m input_pipeline.{importer}`.')
  # ShapesWorld: generated (or verified against its settings) in a folder it owns; any other
  # folder is refused by the builder before it writes anything.
  if jax.process_index() == 0:
    if task == 'pretrain':
      build.build_dataset(directory, build.config_from_dict(data_config.shapesworld))
    else:
      shapesworld_tasks.build_task_dataset(task, directory,
                                           data_config.get('pretraining_dir') or None,
                                           **dict(data_config.shapesworld))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'shapesworld_{task}_ready')
  return directory


def vocab_sizes(directory: str) -> Tuple[int, int]:
  """(word_vocab_size, vocab_size = words + concept rows) of the dataset's vocabularies."""
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  return tokenizer.vocab_size, max(concept_vocab.num_rows, tokenizer.vocab_size)


def task_info(directory: str) -> examples_lib.TaskInfo:
  """Task, complete splits, answers (VQA: `.answers`, `.num_answers`) and label names."""
  return examples_lib.load_task_info(directory)


def check_splits(data_config: ml_collections.ConfigDict, directory: str,
                 splits: Sequence[str]) -> None:
  """Raises DataError naming every split of `splits` that is missing or incomplete, and every
  split whose images hold more regions than `data.max_img_seq_length` keeps (regions beyond it
  would be dropped silently), before any training step."""
  problems = []
  is_task = os.path.exists(os.path.join(directory, examples_lib.TASK_FILE))
  complete = set(task_info(directory).splits) if is_task else None
  keep = data_config.max_img_seq_length
  for split in dict.fromkeys(splits):
    if not os.path.exists(os.path.join(directory, split, COMPLETE_MARKER)) or (
        complete is not None and split not in complete):
      problems.append(f'split {split!r} is missing or incomplete')
      continue
    regions = storage.RecordSource(directory, split).regions_per_image()
    if len(regions) and regions.max() > keep and not data_config.get('truncate_regions'):
      over = int((regions > keep).sum())
      problems.append(
          f'split {split!r}: {over} of {len(regions)} images hold more than '
          f'max_img_seq_length={keep} regions (up to {int(regions.max())}); the extra regions '
          f'would be dropped. Set --config.data.max_img_seq_length={int(regions.max())}, or '
          '--config.data.truncate_regions=True to keep the first ones as the authors do with '
          'VinVL detections')
  if problems:
    raise DataError(f'{directory}: ' + '; '.join(problems) + '.')


def create_iterator(data_config: ml_collections.ConfigDict, directory: str, split: str, *,
                    task: str = 'pretrain', per_host_batch_size: int, seed: int, train: bool,
                    corrupt: bool = True, preprocess: Optional[str] = None,
                    batch_keys: Optional[Sequence[str]] = None):
  """The resumable per-host iterator of a split.

  Training (`train=True`): shuffled, repeated, whole batches. Evaluation: one ordered pass, the
  last batch padded (`example_valid` = 0). Pre-training examples are corrupted (15% masking,
  seeded by `seed`: a fixed seed gives the fixed eval corruption of MLM/MCR accuracy) when
  `corrupt`, else clean (`unique_tags|assemble|no_corrupt`: retrieval and grounding
  evaluation). Tasks use `preprocess` / `batch_keys`, else `data.preprocess`, else PIPELINES
  (with `data.tags_as_list`, `unique_tags|assemble` becomes `assemble(tags='tags')`).
  """
  preprocess = preprocess or data_config.get('preprocess') or None
  if data_config.get('pixels'):  # Pixel mode (input_pipeline/features.py): images, not features.
    preprocess = _pixel_preprocess(data_config, task, preprocess, train, corrupt)
  common = dict(lengths=lengths(data_config), batch_size=per_host_batch_size, seed=seed,
                shuffle=train, repeat=train, pad_final_batch=not train)
  if task == 'pretrain':
    tokenizer, concept_vocab = storage.load_vocabularies(directory)
    return pretraining.create_pretraining_iterator(
        directory, split, tokenizer=tokenizer, concept_vocab=concept_vocab,
        corrupt=corrupt, mask_prob=data_config.mask_prob, preprocess=preprocess, **common)
  default_preprocess, default_keys = PIPELINES[task]
  if data_config.get('tags_as_list'):  # COCO retrieval: all tags, duplicates in region order.
    default_preprocess = default_preprocess.replace('unique_tags|assemble', "assemble(tags='tags')")
  return task_iterators.create_task_iterator(
      directory, task, split, preprocess=preprocess or default_preprocess,
      batch_keys=default_keys if batch_keys is None else batch_keys, **common)


def _pixel_preprocess(data_config, task: str, preprocess: Optional[str], train: bool,
                      corrupt: bool) -> str:
  """The op string with the image ops in front: `data.augment` (None: ops.PIXEL_AUGMENT[task])
  when training, then resize to `data.image_size` (`data.image_resize`: 'bicubic' or 'bilinear')
  and normalise by `data.image_norm`."""
  if not data_config.get('image_size'):
    raise ValueError('data.pixels=True needs data.image_size (the tower\'s resolution).')
  if preprocess is None and task == 'pretrain':
    preprocess = pretraining.default_preprocess(corrupt, data_config.mask_prob)
  elif preprocess is None:
    preprocess = PIPELINES[task][0]
    if data_config.get('tags_as_list'):
      preprocess = preprocess.replace('unique_tags|assemble', "assemble(tags='tags')")
  augment = data_config.get('augment')
  augment = ops.PIXEL_AUGMENT[task] if augment is None else augment
  return ops.pixel_preprocess(preprocess, image_size=data_config.image_size,
                              image_norm=data_config.get('image_norm', 'minus_one_to_one'),
                              augment=augment if train else '',
                              resize_method=data_config.get('image_resize', 'bicubic'))


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> Dict[str, jax.Array]:
  """Per-host numpy batch -> global jax.Arrays sharded over the batch axes of the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def cached_batches(iterator: Iterator[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
  """Materialises a finite (evaluation) iterator."""
  batches = list(iterator)
  if not batches:
    raise ValueError('The evaluation split yielded no batch.')
  logging.info('Cached %d evaluation batches.', len(batches))
  return batches


def model_inputs(batch: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops bookkeeping keys that the model does not take (strings, ids)."""
  return {k: v for k, v in batch.items() if k not in ('example_index',)}
