"""A built source (builders.py, import_builders.py) -> the layouts the trainer reads.

  link_pretraining(tfds_dir, '/data/cc3m_mvp', ['train'], tokenizer='vocab.txt',
                   concepts='id2phrase.json')       # storage.py layout, array_record linked
  write_retrieval(tfds_dir, '/data/coco_retrieval', {'train': ['train', 'restval'],
                  'val': ['val'], 'test': ['test']}, vocab_dir='/data/cc3m_mvp')
  link_task(tfds_dir, '/data/vqa', 'val')           # a built task split (vqa_task, ...)

`link_split` makes DIR/<split>/ a one-split TFDS folder whose array_record files are symbolic
links to the built ones (or copies with `copy=True`, e.g. across filesystems), with
captions_per_image.npy and regions_per_image.npy; `link_pretraining` does it for image records
and adds metadata.json and the vocabularies: the tokenizer file and either a
given id2phrase.json or one built from the split's phrases (`min_concept_count`). The records are
not rewritten: the builder wrote them with storage.record_features, the spec the pipeline parses.
`write_retrieval` writes retrieval task splits (input_pipeline/tasks/examples.py: one example per
caption, `{image_id}#{k}`, images in built order) from one or more built splits each.
`link_task` lays a built task split out as tasks/examples.py describes: its image records
linked (they also carry the split's task examples, which the pipeline's reader skips), the
examples in <split>.examples.jsonl, task.json, answers.json and the vocabularies.
"""

import json
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


def record_counts(filepaths: Sequence[str], with_examples: bool = False) -> dict:
  """One pass over array_record image records, parsing only the counted keys.

  Returns {'captions': int32 [images], 'regions': int32 [images] (tags per record), in stored
  order} and, `with_examples` (task builders, import_builders.py), 'image_ids' [images] and
  'examples': the records' task examples as [(position, image index, JSON bytes)].
  """
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource([os.fspath(p) for p in filepaths])
  spec = {'captions': tf.io.VarLenFeature(tf.string), 'tags': tf.io.VarLenFeature(tf.string)}
  if with_examples:
    spec.update(examples=tf.io.VarLenFeature(tf.string),
                example_positions=tf.io.VarLenFeature(tf.int64),
                image_id=tf.io.FixedLenFeature([], tf.string))
  counts = {'captions': [], 'regions': []}
  examples, image_ids = [], []
  for start in range(0, len(source), 1024):
    serialized = source.__getitems__(list(range(start, min(start + 1024, len(source)))))
    parsed = tf.io.parse_example(serialized, spec)
    for key, name in (('captions', 'captions'), ('regions', 'tags')):
      counts[key].append(tf.math.bincount(tf.cast(parsed[name].indices[:, 0], tf.int32),
                                          minlength=len(serialized)).numpy())
    if with_examples:
      image_ids.extend(i.decode('utf-8') for i in parsed['image_id'].numpy())
      rows = parsed['examples'].indices[:, 0].numpy() + start
      examples.extend(zip(parsed['example_positions'].values.numpy().tolist(), rows.tolist(),
                          parsed['examples'].values.numpy().tolist()))
  out = {k: np.concatenate(v).astype(np.int32) if v else np.zeros(0, np.int32)
         for k, v in counts.items()}
  if with_examples:
    out.update(examples=examples, image_ids=image_ids)
  return out


def captions_per_image(filepaths: Sequence[str]) -> np.ndarray:
  """int32 [images]: the number of captions of every record, in stored order."""
  return record_counts(filepaths)['captions']


def record_files(split_info) -> list[str]:
  """The array_record files of a built split (builders.py writes them beside the main format)."""
  template = split_info.filename_template.replace(filetype_suffix='array_record')
  return sorted(os.fspath(p) for p in template.sharded_filepaths(split_info.num_shards))


def link_split(tfds_dir: str, directory: str, split: str, *, out_split: Optional[str] = None,
               features: Optional[tfds.features.FeaturesDict] = None, copy: bool = False,
               overwrite: bool = False, with_examples: bool = False) -> dict:
  """DIR/<out_split>/: a one-split TFDS folder of the built split's array_record files.

  The files are symbolic links (relative when the built dataset lies inside `directory`, so the
  folder can be moved whole) or copies; captions_per_image.npy and regions_per_image.npy are
  written beside them. `features` (default: the built ones) is the spec the folder's readers
  parse: a task builder's records carry their task examples too, which storage.RecordSource
  skips with `storage.record_features`. Returns record_counts (with_examples: the examples).
  """
  builder = tfds.builder_from_directory(tfds_dir)
  out_split = out_split or split
  if split not in builder.info.splits:
    raise KeyError(f'{tfds_dir}: no split {split!r} (has {list(builder.info.splits)}).')
  final = os.path.join(directory, out_split)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f'{final}: split already there (pass overwrite=True).')
  os.makedirs(directory, exist_ok=True)
  info = builder.info.splits[split]
  tmp = os.path.join(directory, f'.{out_split}.linking-{uuid.uuid4().hex}')
  os.makedirs(tmp)
  try:
    template = tfds.core.ShardedFileTemplate(data_dir=tmp, template=_TEMPLATE,
                                             dataset_name=builder.name, split=out_split,
                                             filetype_suffix='array_record')
    paths = record_files(info)
    inside = os.path.abspath(tfds_dir).startswith(os.path.abspath(directory) + os.sep)
    for i, path in enumerate(paths):
      target = os.fspath(template.sharded_filepath(shard_index=i, num_shards=len(paths)))
      if copy:
        shutil.copyfile(path, target)
      else:
        os.symlink(os.path.relpath(path, tmp) if inside else os.path.abspath(path), target)
    counts = record_counts(paths, with_examples)
    np.save(os.path.join(tmp, storage.CAPTIONS_FILE), counts['captions'])
    np.save(os.path.join(tmp, storage.REGIONS_FILE), counts['regions'])
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=features or builder.info.features, filename_template=template,
        split_infos=[tfds.core.SplitInfo(name=out_split, shard_lengths=list(info.shard_lengths),
                                         num_bytes=info.num_bytes, filename_template=template)],
        check_data=False, version='1.0.0',
        description=f'{builder.name} {split} (linked from {os.path.abspath(tfds_dir)}).')
    storage.publish_split(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return counts


def link_pretraining(tfds_dir: str, directory: str, splits: Sequence[str], *, tokenizer: str,
                     concepts_file: Optional[str] = None, min_concept_count: int = 1,
                     copy: bool = False, overwrite: bool = False) -> dict:
  """Exposes built splits in the storage.py layout; returns {split: number of images}."""
  builder = tfds.builder_from_directory(tfds_dir)
  feature_dim = builder.info.features['region_features'].shape[-1]
  sizes = {split: len(link_split(tfds_dir, directory, split, copy=copy,
                                 overwrite=overwrite)['captions']) for split in splits}
  merge_metadata(directory, {'region_feature_dim': feature_dim, 'source': builder.name,
                             'tfds_dir': os.path.abspath(tfds_dir)})
  tok = tokenizers.load_tokenizer(tokenizer)
  if concepts_file is not None:
    vocab = concepts.ConceptVocab.load(concepts_file, tok.vocab_size)
  else:
    phrases = (p for split in splits for p in _caption_phrases(directory, split))
    vocab = concepts.ConceptVocab.build(phrases, tok, min_concept_count)
  storage.save_vocabularies(directory, tokenizer, vocab)
  return sizes


def link_task(tfds_dir: str, directory: str, split: str, *, out_split: Optional[str] = None,
              vocab_dir: Optional[str] = None, overwrite: bool = False) -> examples_lib.TaskInfo:
  """A built task split (import_builders.py: VqaTask, SnliVeTask, RefcocoTask) -> the task
  layout of tasks/examples.py; returns the updated TaskInfo.

  The split's image records are linked as DIR/<out_split>/ (read as storage.record_features:
  the examples they carry are skipped), the examples they carry go, in their imported order,
  to <out_split>.examples.jsonl; answers.json (VQA) comes from the build's metadata, the
  vocabularies from `vocab_dir` (default: the one the build recorded, its first image source).
  """
  builder = tfds.builder_from_directory(tfds_dir)
  meta, out_split = builder.info.metadata, out_split or split
  task, dim = meta['task'], builder.info.features['region_features'].shape[-1]
  examples_lib.copy_vocabularies(vocab_dir or meta['vocab_dir'], directory)
  if task == 'vqa':
    examples_lib.write_answers(directory, meta['answers'])

  def write_images():
    counts = link_split(tfds_dir, directory, split, out_split=out_split,
                        features=storage.record_features(dim), overwrite=True,
                        with_examples=True)
    merge_metadata(directory, {'task': task, 'region_feature_dim': dim})
    ids = counts['image_ids']
    examples = []
    for _, row, data in sorted(counts['examples']):
      example = json.loads(data)
      if example['image_id'] != ids[row]:
        raise ValueError(f'{tfds_dir} {split}: record {row} ({ids[row]!r}) carries an example '
                         f'of image {example["image_id"]!r}.')
      examples.append(example)
    return ids, examples

  return examples_lib.commit_task_split(directory, out_split, task=task,
                                        write_images=write_images,
                                        source=meta['sources'][split], overwrite=overwrite)


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


def merge_metadata(directory: str, new: dict) -> None:
  """Adds `new` to DIR/metadata.json; a key already there with another value is an error."""
  path = os.path.join(directory, storage.METADATA_FILE)
  old = storage.read_metadata(directory) if os.path.exists(path) else {}
  clashes = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
  if clashes:
    raise ValueError(f'{path}: disagrees with this source (key: (stored, new)): {clashes}.')
  jsonio.write_json_atomically({**old, **new}, path, sort_keys=True)
