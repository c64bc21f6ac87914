"""A built source (builders.py) -> the layouts the trainer reads.

  link_pretraining(tfds_dir, '/data/cc3m_mvp', ['train'], tokenizer='vocab.txt',
                   concepts='id2phrase.json')       # storage.py layout, array_record linked
  write_retrieval(tfds_dir, '/data/coco_retrieval', {'train': ['train', 'restval'],
                  'val': ['val'], 'test': ['test']}, vocab_dir='/data/cc3m_mvp')

`link_pretraining` makes DIR/<split>/ a one-split TFDS folder whose array_record files are
symbolic links to the built ones (or copies with `copy=True`, e.g. across filesystems), adds
captions_per_image.npy and metadata.json, and the vocabularies: the tokenizer file and either a
given id2phrase.json or one built from the split's phrases (`min_concept_count`). The records are
not rewritten: the builder wrote them with storage.record_features, the spec the pipeline parses.
`write_retrieval` writes retrieval task splits (input_pipeline/tasks/examples.py: one example per
caption, `{image_id}#{k}`, images in built order) from one or more built splits each.
"""

import os
import shutil
import uuid
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import concepts
from input_pipeline import jsonio
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing

_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


def captions_per_image(filepaths: Sequence[str]) -> np.ndarray:
  """int32 [images]: the number of captions of every record, in stored order."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource([os.fspath(p) for p in filepaths])
  counts = []
  for start in range(0, len(source), 1024):
    serialized = source.__getitems__(list(range(start, min(start + 1024, len(source)))))
    parsed = tf.io.parse_example(serialized, {'captions': tf.io.VarLenFeature(tf.string)})
    counts.append(tf.math.bincount(tf.cast(parsed['captions'].indices[:, 0], tf.int32),
                                   minlength=len(serialized)).numpy())
  return np.concatenate(counts).astype(np.int32) if counts else np.zeros(0, np.int32)


def record_files(split_info) -> list[str]:
  """The array_record files of a built split (builders.py writes them beside the main format)."""
  template = split_info.filename_template.replace(filetype_suffix='array_record')
  return sorted(os.fspath(p) for p in template.sharded_filepaths(split_info.num_shards))


def link_pretraining(tfds_dir: str, directory: str, splits: Sequence[str], *, tokenizer: str,
                     concepts_file: Optional[str] = None, min_concept_count: int = 1,
                     copy: bool = False, overwrite: bool = False) -> dict:
  """Exposes built splits in the storage.py layout; returns {split: number of images}."""
  builder = tfds.builder_from_directory(tfds_dir)
  os.makedirs(directory, exist_ok=True)
  feature_dim = builder.info.features['region_features'].shape[-1]
  sizes = {}
  for split in splits:
    if split not in builder.info.splits:
      raise KeyError(f'{tfds_dir}: no split {split!r} (has {list(builder.info.splits)}).')
    final = os.path.join(directory, split)
    if os.path.exists(final) and not overwrite:
      raise FileExistsError(f'{final}: split already there (pass overwrite=True).')
    info = builder.info.splits[split]
    tmp = os.path.join(directory, f'.{split}.linking-{uuid.uuid4().hex}')
    os.makedirs(tmp)
    template = tfds.core.ShardedFileTemplate(data_dir=tmp, template=_TEMPLATE,
                                             dataset_name=builder.name, split=split,
                                             filetype_suffix='array_record')
    paths = record_files(info)
    for i, path in enumerate(paths):
      target = os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(paths)))
      (shutil.copyfile if copy else os.symlink)(os.path.abspath(path), target)
    counts = captions_per_image(paths)
    np.save(os.path.join(tmp, storage.CAPTIONS_FILE), counts)
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=builder.info.features, filename_template=template,
        split_infos=[tfds.core.SplitInfo(name=split, shard_lengths=list(info.shard_lengths),
                                         num_bytes=info.num_bytes, filename_template=template)],
        check_data=False, version='1.0.0', description=f'{builder.name} {split} (linked).')
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(tmp, final)
    sizes[split] = len(counts)
  _merge_metadata(directory, {'region_feature_dim': feature_dim, 'source': builder.name,
                              'tfds_dir': os.path.abspath(tfds_dir)})
  tok = tokenizers.load_tokenizer(tokenizer)
  if concepts_file is not None:
    vocab = concepts.ConceptVocab.load(concepts_file, tok.vocab_size)
  else:
    phrases = (p for split in splits for p in _caption_phrases(directory, split))
    vocab = concepts.ConceptVocab.build(phrases, tok, min_concept_count)
  storage.save_vocabularies(directory, tokenizer, vocab)
  return sizes


def _caption_phrases(directory: str, split: str):
  for record in storage.read_dataset(directory, split).as_numpy_iterator():
    for caption in record['phrases']:
      yield [tuple(w.decode('utf-8') for w in p) for p in caption]


def decoded_records(tfds_dir: str, split: str):
  """The built records of a split as image records (features.py), in stored order."""
  source = tfds.builder_from_directory(tfds_dir).as_data_source(split)
  text = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
  for i in range(len(source)):
    v = source[i]
    yield {
        'image_id': text(v['image_id']), 'image_png': bytes(v['image_png']),
        'image_size': np.asarray(v['image_size'], np.int32),
        'region_features': np.asarray(v['region_features'], np.float32),
        'boxes': np.asarray(v['boxes'], np.float32).reshape(-1, 4),
        'tags': [text(t) for t in v['tags']], 'captions': [text(c) for c in v['captions']],
        'phrases': [[tuple(text(w) for w in p) for p in c] for c in v['phrases']],
        'phrase_regions': [[int(r) for r in c] for c in v['phrase_regions']],
    }


def write_retrieval(tfds_dir: str, out_dir: str, splits: Mapping[str, Sequence[str]], *,
                    vocab_dir: str, overwrite: bool = False) -> examples_lib.TaskInfo:
  """Retrieval task splits {out split: [built splits]}, vocabularies copied from `vocab_dir`."""
  examples_lib.copy_vocabularies(vocab_dir, out_dir)
  info = None
  for out_split, built in splits.items():
    records = [r for split in built for r in decoded_records(tfds_dir, split)]
    info = examples_lib.write_task_split(
        out_dir, out_split, task='retrieval', records=records,
        examples=list(importing.retrieval_examples(records)),
        source=f'{tfds_dir}:{"+".join(built)}', overwrite=overwrite)
  return info


def _merge_metadata(directory: str, new: dict) -> None:
  path = os.path.join(directory, storage.METADATA_FILE)
  old = storage.read_metadata(directory) if os.path.exists(path) else {}
  clashes = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
  if clashes:
    raise ValueError(f'{path}: disagrees with this source (key: (stored, new)): {clashes}.')
  jsonio.write_json_atomically({**old, **new}, path, sort_keys=True)
