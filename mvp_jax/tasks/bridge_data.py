"""Data functions of the CONTRACTS.md `mvp_jax.data` interface, on today's input pipeline.

The pipeline helper's `mvp_jax/data.py` will provide these with the same signatures; then the
trainer imports `mvp_jax.data` instead of this module and this file goes. Until then the
dispatch between the pre-training and the task pipeline lives here, in one place.
"""

import os
from typing import Iterable, Optional

import jax
import ml_collections

from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators
from mvp_jax import data

vocab_sizes = data.vocab_sizes
to_global = data.to_global
lengths = data.lengths


def prepare_dataset(data_config: ml_collections.ConfigDict, workdir: str,
                    task: str = 'pretrain') -> str:
  """The dataset directory of `task`; ShapesWorld data is generated there on first use.

  Pre-training: `data.prepare_dataset`. Tasks: ShapesWorld task data (default directory
  `<workdir>/shapesworld_<task>`) takes its vocabulary and generation settings from the
  pre-training dataset `data_config.pretraining_dir`; `records` must exist.
  """
  if task == 'pretrain':
    return data.prepare_dataset(data_config, workdir)
  directory = data_config.get('directory') or os.path.join(workdir, f'shapesworld_{task}')
  if data_config.kind == 'shapesworld':
    from input_pipeline.tasks import shapesworld_tasks  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      shapesworld_tasks.build_task_dataset(task, directory,
                                           data_config.get('pretraining_dir') or None,
                                           **dict(data_config.shapesworld))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('shapesworld_task_ready')
  elif data_config.kind == 'records':
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'data.directory {directory!r} does not exist; import the task '
                              f'data with `input_pipeline.tasks` first.')
  else:
    raise ValueError(f"Unknown data.kind {data_config.kind!r}: 'shapesworld' or 'records'.")
  return directory


def task_info(directory: str, task: str = 'pretrain') -> Optional[examples_lib.TaskInfo]:
  """The task dataset's TaskInfo (answers, num_answers, splits); None for pre-training."""
  return None if task == 'pretrain' else task_iterators.load_task_info(directory)


def check_splits(data_config: ml_collections.ConfigDict, directory: str, splits: Iterable[str],
                 task: str = 'pretrain') -> None:
  """Raises ValueError naming every split of `splits` that is missing or incomplete."""
  del data_config
  problems = []
  for split in dict.fromkeys(splits):
    try:
      if task != 'pretrain':
        examples_lib.read_examples(directory, split)
      storage.RecordSource(directory, split)
    except (OSError, ValueError) as e:
      problems.append(f'{split!r}: {e}')
  if problems:
    raise ValueError(f'{directory}: the run reads splits that are missing or incomplete, found '
                     f'before training: ' + '; '.join(problems))


def create_iterator(data_config: ml_collections.ConfigDict, directory: str, split: str, *,
                    task: str = 'pretrain', per_host_batch_size: int, seed: int, train: bool,
                    corrupt: bool = False):
  """The resumable per-host iterator of a split.

  Training: shuffled, repeated (pre-training: corrupted, 15% masking). Evaluation: one ordered
  pass, the last batch padded (`example_valid` = 0); `corrupt` applies the pre-training
  corruption with the fixed `seed` (MLM/MCR accuracy), clean otherwise (retrieval, grounding).
  """
  if task == 'pretrain':
    tokenizer, concept_vocab = storage.load_vocabularies(directory)
    return pretraining.create_pretraining_iterator(
        directory, split, tokenizer=tokenizer, concept_vocab=concept_vocab,
        lengths=data.lengths(data_config), batch_size=per_host_batch_size, seed=seed,
        shuffle=train, repeat=train, corrupt=train or corrupt, mask_prob=data_config.mask_prob,
        pad_final_batch=not train)
  return task_iterators.create_task_iterator(
      directory, task, split, lengths=data.lengths(data_config),
      batch_size=per_host_batch_size, seed=seed, shuffle=train, repeat=train,
      pad_final_batch=not train, tags_as_list=data_config.get('tags_as_list', False))
