"""The pre-training input pipeline: image records -> (corrupted) batched (image, caption) examples.

One example per caption: example `i` of a split is caption `i - first(image)` of the image
holding it, counting captions over images in stored order (`processor.CaptionExamples`). Order,
host sharding, padding and resume are those of `iterators.example_iterator`; each example is laid
out and corrupted by the op string `preprocess` (ops.py), seeded by (seed, epoch, example_index).
"""

from typing import Optional

import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import concepts
from input_pipeline import iterators
from input_pipeline import ops
from input_pipeline import processor
from input_pipeline import storage
from input_pipeline import tokenizers

Lengths = assembly.Lengths
host_example_order = iterators.host_example_order


def default_preprocess(corrupt: bool, mask_prob: float = 0.15) -> str:
  """The pre-training op string: `unique_tags|assemble|corrupt(p)`, or `...|no_corrupt`."""
  return f'unique_tags|assemble|corrupt({mask_prob})' if corrupt else ops.PRESETS['clean']


def create_pretraining_iterator(
    directory: str, split: str, *, tokenizer: tokenizers.Tokenizer,
    concept_vocab: concepts.ConceptVocab, lengths: Lengths, batch_size: int, seed: int,
    shuffle: bool, repeat: bool, corrupt: bool = True, mask_prob: float = 0.15,
    process_index: Optional[int] = None, process_count: Optional[int] = None,
    pad_final_batch: bool = False, num_parallel_calls=tf.data.AUTOTUNE,
    preprocess: Optional[str] = None,
) -> iterators.ResumableIterator:
  """Batches of `features.BATCH_KEYS` (numpy) for this host; see the module docstring.

  Args:
    directory, split: a dataset written by `storage.write_dataset`.
    tokenizer, concept_vocab: vocabularies (e.g. `storage.load_vocabularies(directory)`).
    lengths: sequence lengths.
    batch_size: per-host batch.
    seed: seeds the order and the corruption.
    shuffle: reshuffle every epoch; otherwise stored order.
    repeat: run over epochs forever; otherwise stop after one epoch.
    corrupt, mask_prob: the default op string, `default_preprocess(corrupt, mask_prob)`.
    process_index, process_count: this host and the number of hosts (default: jax's).
    pad_final_batch: keep every example, padding the last batch (for evaluation).
    num_parallel_calls: parallelism of the per-example work.
    preprocess: op string (ops.py) replacing the default.
  """
  source = storage.RecordSource(directory, split)
  examples = processor.CaptionExamples(source)
  context = ops.Context(tokenizer, concept_vocab, lengths, seed=seed)
  op = ops.build(preprocess or default_preprocess(corrupt, mask_prob), context)
  return iterators.example_iterator(
      processor.ExampleProcessor(source, examples, op), examples.num_examples,
      batch_size=batch_size, seed=seed, shuffle=shuffle, repeat=repeat,
      pad_final_batch=pad_final_batch, process_index=process_index,
      process_count=process_count, num_parallel_calls=num_parallel_calls,
      where=f'{directory}/{split}', fingerprint={})
