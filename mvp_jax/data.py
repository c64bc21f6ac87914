"""Glue between the trainer and `input_pipeline`: datasets on disk, iterators, global arrays."""

import os
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from input_pipeline import pretraining
from input_pipeline import storage

COMPLETE_MARKER = 'dataset_info.json'


def lengths(data_config: ml_collections.ConfigDict) -> pretraining.Lengths:
  return pretraining.Lengths(max_seq_length=data_config.max_seq_length,
                             max_phrases=data_config.max_phrases,
                             max_tag_length=data_config.max_tag_length,
                             max_img_seq_length=data_config.max_img_seq_length)


def prepare_dataset(data_config: ml_collections.ConfigDict, workdir: str) -> str:
  """Returns the dataset directory, generating ShapesWorld there first if it is not complete.

  `kind='shapesworld'` generates the built-in dataset (deterministic by seed) into
  `data_config.directory` (default `<workdir>/shapesworld`); `kind='records'` reads a directory
  written by `input_pipeline.storage` (e.g. by `python -m input_pipeline.import_vinvl`).
  """
  directory = data_config.get('directory') or os.path.join(workdir, data_config.kind)
  if data_config.kind == 'shapesworld':
    from input_pipeline.shapesworld import build  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      build.build_dataset(directory, build.config_from_dict(data_config.shapesworld))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('shapesworld_ready')
  elif data_config.kind == 'records':
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'data.directory {directory!r} does not exist; write it with '
                              f'`python -m input_pipeline.import_vinvl` first.')
  else:
    raise ValueError(f"Unknown data.kind {data_config.kind!r}: 'shapesworld' or 'records'.")
  return directory


def vocab_sizes(directory: str) -> Tuple[int, int]:
  """(word_vocab_size, vocab_size = words + concept rows) of the dataset's vocabularies."""
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  return tokenizer.vocab_size, max(concept_vocab.num_rows, tokenizer.vocab_size)


def create_iterator(data_config: ml_collections.ConfigDict, directory: str, split: str, *,
                    per_host_batch_size: int, seed: int, train: bool):
  """The resumable per-host iterator of `input_pipeline.pretraining` for a split.

  Training: shuffled, repeated, corrupted (15% masking). Evaluation: one ordered pass, corrupted
  with a fixed seed (for MLM/MCR accuracy), the last batch padded (`example_valid` = 0).
  """
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  return pretraining.create_pretraining_iterator(
      directory, split, tokenizer=tokenizer, concept_vocab=concept_vocab,
      lengths=lengths(data_config), batch_size=per_host_batch_size, seed=seed, shuffle=train,
      repeat=train, corrupt=True, mask_prob=data_config.mask_prob,
      pad_final_batch=not train)


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
