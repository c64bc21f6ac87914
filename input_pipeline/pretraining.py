"""The pre-training input pipeline: image records -> corrupted, batched (image, caption) examples.

One example per caption. Example `i` of a split is caption `i - first(image)` of the image holding
it, counting captions over images in stored order. Per epoch:
  1. the order of all example indices is a permutation seeded by (seed, epoch) (identity without
     shuffle); host h takes positions h, h + H, h + 2H, ... (disjoint, covering);
  2. training (drop remainder): every host keeps floor(num_examples / H) // batch_size batches;
     with `pad_final_batch`, every host gets ceil(ceil(num_examples / H) / batch_size) batches and
     the missing rows are padding (example_valid 0, zeros, labels/links/indices -1);
  3. examples are read by random access, tokenized, assembled and corrupted with a seed derived
     from (seed, epoch, example_index), then batched.
Because the whole order is a function of (seed, epoch), resuming starts a dataset at (epoch, batch)
by slicing the index list before any record is read.
"""


import numpy as np
import tensorflow as tf

from input_pipeline import assembly
from input_pipeline import concepts
from input_pipeline import features
from input_pipeline import iterators
from input_pipeline import masking
from input_pipeline import storage
from input_pipeline import tokenizers

Lengths = assembly.Lengths

_NEGATIVE_PADDING = ('mlm_labels_a', 'mlm_labels_b', 'phrase_region_links', 'image_index',
                     'example_index')


def create_pretraining_iterator(
    directory: str, split: str, *, tokenizer: tokenizers.Tokenizer,
    concept_vocab: concepts.ConceptVocab, lengths: Lengths, batch_size: int, seed: int,
    shuffle: bool, repeat: bool, corrupt: bool, mask_prob: float = 0.15,
    process_index: int | None = None, process_count: int | None = None,
    pad_final_batch: bool = False, num_parallel_calls=tf.data.AUTOTUNE,
    layout: assembly.LayoutOptions = assembly.LayoutOptions(),
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
    corrupt: apply MLM/MCR corruption; otherwise all labels are -1.
    mask_prob: corruption probability.
    process_index, process_count: this host and the number of hosts (default: jax's).
    pad_final_batch: keep every example, padding the last batch (for evaluation).
    num_parallel_calls: parallelism of the per-example work.
    layout: layout variant (defaults to the pre-training layout).
  """
  process_index, process_count = iterators.resolve_hosts(process_index, process_count)
  source = storage.RecordSource(directory, split)
  num_examples = int(source.captions_per_image.sum())
  batches_per_epoch = iterators.batches_per_epoch(num_examples, process_count, batch_size,
                                                  pad_final_batch, f'{directory}/{split}')
  process = _ExampleProcessor(source, tokenizer, concept_vocab, lengths, layout, seed,
                              corrupt, mask_prob)

  def make_dataset(start_epoch: int, start_batch: int) -> tf.data.Dataset:
    def epoch_indices(epoch):
      host = host_example_order(
          epoch, num_examples=num_examples, seed=seed, shuffle=shuffle,
          process_index=process_index, process_count=process_count,
          num_rows=batches_per_epoch * batch_size)
      start = tf.where(epoch == start_epoch, start_batch * batch_size, 0)
      host = host[tf.cast(start, tf.int32):]
      return tf.data.Dataset.from_tensor_slices(
          {'epoch': tf.fill(tf.shape(host), epoch), 'example_index': host})

    return iterators.epochs_to_batches(epoch_indices, start_epoch, repeat, process.read, process,
                                       batch_size, num_parallel_calls)

  fingerprint = {'seed': seed, 'shuffle': shuffle, 'num_examples': num_examples,
                 'batch_size': batch_size, 'process_index': process_index,
                 'process_count': process_count, 'pad_final_batch': pad_final_batch}
  return iterators.ResumableIterator(make_dataset, batches_per_epoch=batches_per_epoch,
                                     fingerprint=fingerprint)


class _ExampleProcessor:
  """In-graph per-example work: locate, read, assemble, corrupt, pad."""

  def __init__(self, source, tokenizer, concept_vocab, lengths, layout, seed, corrupt,
               mask_prob):
    self._source = source
    self._caption_ends = tf.constant(np.cumsum(source.captions_per_image), tf.int64)
    self._counts = tf.constant(source.captions_per_image, tf.int64)
    self._assemble = assembly.ExampleAssembler(tokenizer, concept_vocab, lengths, layout)
    self._seed = seed
    if corrupt:
      self._corrupt = masking.Corruption(tokenizer.mask_id, tokenizer.vocab_size,
                                         concept_vocab.num_rows, mask_prob=mask_prob)
    else:
      self._corrupt = lambda example, seed: masking.no_corruption(example)

  @tf.autograph.experimental.do_not_convert
  def read(self, chunk: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Adds image_index, caption_index and the serialized record to a chunk of indices."""
    index = tf.maximum(chunk['example_index'], 0)  # Padding rows read example 0, then blank.
    image = tf.searchsorted(self._caption_ends, index, side='right')
    caption = index - (tf.gather(self._caption_ends, image) - tf.gather(self._counts, image))
    return {**chunk, 'image_index': image, 'caption_index': caption,
            'record': self._source.read_tf(image)}

  @tf.autograph.experimental.do_not_convert
  def __call__(self, item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    record = self._source.parse(item['record'])
    c = item['caption_index']
    example = self._assemble(record['captions'][c], record['phrases'][c],
                             record['phrase_regions'][c], record['tags'],
                             record['region_features'])
    rng = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(tf.constant([self._seed, 1], tf.int64),
                                                 item['epoch']), item['example_index'])
    example = self._corrupt(example, rng)
    valid = item['example_index'] >= 0
    example['image_index'] = tf.cast(item['image_index'], tf.int32)
    example['example_index'] = item['example_index']
    example['example_valid'] = tf.cast(valid, tf.int32)
    return {k: iterators.blank_unless(valid, example[k], -1 if k in _NEGATIVE_PADDING else 0)
            for k in features.BATCH_KEYS}


def host_example_order(epoch: tf.Tensor, *, num_examples: int, seed: int, shuffle: bool,
                       process_index: int, process_count: int, num_rows: int) -> tf.Tensor:
  """The example indices one host reads in one epoch, in order (in-graph).

  Args:
    epoch: int64 [], the epoch (seeds the permutation with `seed`).
    num_examples: examples in the split.
    seed, shuffle: permute all examples (identity without shuffle).
    process_index, process_count: this host takes positions process_index + k * process_count.
    num_rows: length of the result: this host's share is truncated, or padded with -1, to it.

  Returns:
    int64 [num_rows], example indices; -1 marks padding rows.
  """
  order = tf.range(num_examples, dtype=tf.int64)
  if shuffle:
    order_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64),
                                                          epoch)
    order = tf.random.experimental.stateless_shuffle(order, order_seed)
  host = order[process_index::process_count]
  host = tf.pad(host, [[0, tf.maximum(num_rows - tf.size(host), 0)]], constant_values=-1)
  return host[:num_rows]
