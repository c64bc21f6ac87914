"""Stores image records (see `features.py`) as TFDS datasets in the array_record format.

Layout of a dataset directory:
  directory/metadata.json          dataset-level metadata (shared by all splits)
  directory/vocab.txt | *.model    tokenizer vocabulary   } written by `save_vocabularies`
  directory/id2phrase.json         concept vocabulary     }
  directory/<split>/               one TFDS dataset folder per split (dataset_info.json,
                                   features.json, <name>-<split>.array_record-XXXXX-of-YYYYY,
                                   captions_per_image.npy, regions_per_image.npy)
A split is written into a hidden temporary folder and renamed into place only once complete, so a
split folder that exists is always whole. array_record gives random access by image index, which
the pre-training pipeline uses to read examples in any order and to resume cheaply.
"""

import io
import json
import os
import shutil
import uuid
from typing import Any, Iterable, Mapping, Optional

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np
from PIL import Image
from PIL import ImageFile
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import concepts
from input_pipeline import features as features_lib
from input_pipeline import jsonio
from input_pipeline import tokenizers

DATASET_NAME = 'mvp_records'
METADATA_FILE = 'metadata.json'
CONCEPTS_FILE = 'id2phrase.json'
CAPTIONS_FILE = 'captions_per_image.npy'
REGIONS_FILE = 'regions_per_image.npy'
_FILE_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
_WRITER_OPTIONS = 'group_size:1,uncompressed'  # group_size 1: cheap random access.


def record_features(feature_dim: int) -> tfds.features.FeaturesDict:
  """The TFDS feature spec of an image record with `feature_dim`-wide region features."""
  text = tfds.features.Text
  sequence = tfds.features.Sequence
  return tfds.features.FeaturesDict({
      'image_id': text(),
      'image_png': tfds.features.Tensor(shape=(), dtype=np.object_),
      'image_size': tfds.features.Tensor(shape=(2,), dtype=np.int32),
      'region_features': tfds.features.Tensor(shape=(None, feature_dim), dtype=np.float32,
                                              encoding=tfds.features.Encoding.BYTES),
      'boxes': tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      'tags': sequence(text()),
      'captions': sequence(text()),
      'phrases': sequence(sequence(sequence(text()))),
      'phrase_regions': sequence(sequence(np.int32)),
  })


def validate_record(record: Mapping[str, Any], index: int,
                    feature_dim: Optional[int] = None) -> dict[str, Any]:
  """Checks an image record against the contract of `features.py`.

  Args:
    record: the image record.
    index: its position in the written stream (for messages).
    feature_dim: required width of the region features, or None to accept any (>= 6).

  Returns:
    The record in the form `record_features` serialises.

  Raises:
    ValueError: naming the record's image_id and the problem.
  """
  where = f'record {index} (image_id {record.get("image_id")!r})'

  def fail(problem):
    raise ValueError(f'{where}: {problem}')

  missing = [k for k in features_lib.RECORD_KEYS if k not in record]
  unknown = [k for k in record if k not in features_lib.RECORD_KEYS]
  if missing or unknown:
    fail(f'missing keys {missing}, unknown keys {unknown}.')
  if not isinstance(record['image_id'], str) or not record['image_id']:
    fail('image_id must be a non-empty str.')
  if not isinstance(record['image_png'], bytes):
    fail(f'image_png must be bytes, got {type(record["image_png"]).__name__}.')
  size = np.asarray(record['image_size'])
  if size.shape != (2,) or not np.issubdtype(size.dtype, np.integer):
    fail(f'image_size must be int [2], got {size.dtype} {size.shape}.')

  feats = record['region_features']
  if not isinstance(feats, np.ndarray) or feats.dtype != np.float32 or feats.ndim != 2:
    fail(f'region_features must be a float32 [N, D] array, got {_describe(feats)}.')
  num_regions, dim = feats.shape
  if dim < features_lib.NUM_BOX_DIMS or (feature_dim is not None and dim != feature_dim):
    fail(f'region_features has width {dim}, expected {feature_dim or ">= 6"}.')
  if not np.all(np.isfinite(feats)):
    fail('region_features contains NaN or Inf.')
  if feats.size and np.abs(feats).max() > features_lib.MAX_ABS_FEATURE:
    fail(f'region_features holds |value| {np.abs(feats).max():.3g}, beyond '
         f'{features_lib.MAX_ABS_FEATURE:g}: such values overflow in training; rescale them.')
  boxes = record['boxes']
  if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32 or boxes.shape != (
      num_regions, 4):
    fail(f'boxes must be float32 [{num_regions}, 4], got {_describe(boxes)}.')
  if not np.all(np.isfinite(boxes)):
    fail('boxes contains NaN or Inf.')
  tags = record['tags']
  if not _is_str_list(tags) or len(tags) != num_regions:
    fail(f'tags must be a list of {num_regions} str (one per region), got {_describe(tags)}.')

  captions, phrases, links = record['captions'], record['phrases'], record['phrase_regions']
  if not _is_str_list(captions) or not all(c.strip() for c in captions):
    fail('captions must be a list of non-empty str.')
  if not isinstance(phrases, (list, tuple)) or len(phrases) != len(captions):
    fail(f'phrases must be a list with one entry per caption ({len(captions)}), '
         f'got {_describe(phrases)}.')
  if not isinstance(links, (list, tuple)) or len(links) != len(captions):
    fail(f'phrase_regions must be a list with one entry per caption ({len(captions)}), '
         f'got {_describe(links)}.')
  for c, (caption_phrases, caption_links) in enumerate(zip(phrases, links)):
    if not all(isinstance(p, (list, tuple)) and p and _is_str_list(p) and all(p)
               for p in caption_phrases):
      fail(f'phrases[{c}] must be a list of non-empty tuples of non-empty str.')
    if len(caption_links) != len(caption_phrases):
      fail(f'phrase_regions[{c}] has {len(caption_links)} entries for '
           f'{len(caption_phrases)} phrases.')
    if not all(isinstance(r, (int, np.integer)) and -1 <= r < num_regions for r in caption_links):
      fail(f'phrase_regions[{c}] must hold ints in [-1, {num_regions}), got {list(caption_links)}.')
  return {
      'image_id': record['image_id'], 'image_png': record['image_png'],
      'image_size': size.astype(np.int32), 'region_features': feats, 'boxes': boxes,
      'tags': list(tags), 'captions': list(captions),
      'phrases': [[list(p) for p in cp] for cp in phrases],
      'phrase_regions': [np.asarray(cl, np.int32).reshape(-1) for cl in links],
  }


def image_bytes_problem(data: bytes) -> Optional[str]:
  """Why `data` is not a whole PNG or JPEG image (what pixel mode decodes), or None; builders of
  pixel datasets check their images with it (the pipeline itself names the record of bytes that
  are not PNG/JPEG at all, image_ops.decode).

  PNGs are checked chunk by chunk (CRCs, through IEND); JPEGs are decoded at 1/8 scale, which
  reads the whole entropy-coded stream (a truncated file fails) at a fraction of the cost.
  """
  if not (data.startswith(b'\x89PNG\r\n\x1a\n') or data.startswith(b'\xff\xd8\xff')):
    return f'{len(data)} bytes starting {data[:8]!r}, neither PNG nor JPEG'
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format == 'PNG':
        image.verify()
      else:
        image.draft('RGB', (max(image.size[0] // 8, 1), max(image.size[1] // 8, 1)))
        image.load()
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    return f'{type(e).__name__}: {e}'
  return None


def write_dataset(records: Iterable[Mapping[str, Any]], directory: str, split: str, *,
                  metadata: Mapping[str, Any], records_per_shard: int = 1000,
                  overwrite: bool = False) -> int:
  """Validates and writes one split of image records; returns the number of images.

  `metadata` (JSON-serialisable) is merged into `directory/metadata.json`; a key already there
  with another value is an error. `region_feature_dim` is added from the records.
  """
  final = os.path.join(directory, split)
  if os.path.exists(final) and not overwrite:
    raise FileExistsError(f'{final}: split already written (pass overwrite=True to replace it).')
  json.dumps(dict(metadata))  # Fails early on non-JSON metadata.
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{split}.incomplete-{uuid.uuid4().hex}')
  os.makedirs(tmp)
  try:
    dim, shard_lengths, num_bytes, captions, regions = _write_shards(records, tmp, split,
                                                                     records_per_shard)
    merged = _merged_metadata(directory, {**metadata, 'region_feature_dim': dim})
    template = tfds.core.ShardedFileTemplate(
        data_dir=tmp, template=_FILE_TEMPLATE, dataset_name=DATASET_NAME, split=split,
        filetype_suffix='array_record')
    for i in range(len(shard_lengths)):
      os.rename(os.path.join(tmp, f'shard-{i}'),
                template.sharded_filepath(shard_index=i, num_shards=len(shard_lengths)))
    np.save(os.path.join(tmp, CAPTIONS_FILE), np.asarray(captions, np.int32))
    np.save(os.path.join(tmp, REGIONS_FILE), np.asarray(regions, np.int32))
    tfds.folder_dataset.write_metadata(
        data_dir=tmp, features=record_features(dim), filename_template=template,
        split_infos=[tfds.core.SplitInfo(name=split, shard_lengths=shard_lengths,
                                         num_bytes=num_bytes, filename_template=template)],
        check_data=False, version='1.0.0', description='mvp-jax image records.')
    jsonio.write_json_atomically(merged, os.path.join(directory, METADATA_FILE),
                                sort_keys=True)
    publish_split(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return len(captions)


def publish_split(tmp: str, final: str) -> None:
  """Makes the complete split folder `tmp` visible as `final`, replacing any split there: a
  reader sees the old split or the new one, never a partial one."""
  if os.path.exists(final):
    old = os.path.join(os.path.dirname(final),
                       f'.{os.path.basename(final)}.replaced-{uuid.uuid4().hex}')
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old)
  else:
    os.rename(tmp, final)


def _write_shards(records, tmp, split, records_per_shard):
  """Writes validated records into tmp/shard-<i>; returns (dim, shard lengths, bytes, captions
  per image, regions per image)."""
  dim, spec, writer = None, None, None
  shard_lengths, num_bytes, captions, regions, seen = [], 0, [], [], set()
  for index, record in enumerate(records):
    example = validate_record(record, index, dim)
    if example['image_id'] in seen:
      raise ValueError(f'record {index} (image_id {example["image_id"]!r}): duplicate image_id '
                       f'in split {split!r}.')
    seen.add(example['image_id'])
    if spec is None:
      dim = example['region_features'].shape[1]
      spec = record_features(dim)
    if writer is None:
      writer = array_record_module.ArrayRecordWriter(
          os.path.join(tmp, f'shard-{len(shard_lengths)}'), _WRITER_OPTIONS)
      shard_lengths.append(0)
    serialized = spec.serialize_example(example)
    writer.write(serialized)
    num_bytes += len(serialized)
    shard_lengths[-1] += 1
    captions.append(len(example['captions']))
    regions.append(len(example['tags']))
    if shard_lengths[-1] == records_per_shard:
      writer.close()
      writer = None
  if writer is not None:
    writer.close()
  if not captions:
    raise ValueError(f'split {split!r}: no records to write.')
  return dim, shard_lengths, num_bytes, captions, regions


class RecordSource:
  """Random access to the serialized image records of one split.

  Attributes:
    num_images: records in the split.
    captions_per_image: int64 [num_images].
    feature_dim: width D of the region features.
  """

  def __init__(self, directory: str, split: str):
    path = os.path.join(directory, split)
    if not os.path.exists(os.path.join(path, 'dataset_info.json')):
      raise FileNotFoundError(f'{path}: no written split {split!r} (missing dataset_info.json).')
    builder = tfds.builder_from_directory(path)
    info = builder.info.splits[split]
    self.captions_per_image = np.load(os.path.join(path, CAPTIONS_FILE)).astype(np.int64)
    self.num_images = info.num_examples
    if len(self.captions_per_image) != self.num_images:
      raise ValueError(f'{path}: {CAPTIONS_FILE} lists {len(self.captions_per_image)} images, '
                       f'the shards hold {self.num_images}.')
    self._path = path
    self.features = builder.info.features
    self.feature_dim = self.features['region_features'].shape[-1]
    self._source = array_record_data_source.ArrayRecordDataSource(
        [os.fspath(p) for p in info.filepaths])

  def regions_per_image(self) -> np.ndarray:
    """int64 [num_images]: regions of each record (stored at write time; counted by reading
    every record for splits written before that file existed)."""
    path = os.path.join(self._path, REGIONS_FILE)
    if os.path.exists(path):
      return np.load(path).astype(np.int64)
    counts = []
    for start in range(0, self.num_images, 256):
      for data in self.read(np.arange(start, min(start + 256, self.num_images))):
        counts.append(len(self.features.deserialize_example_np(data)['tags']))
    return np.asarray(counts, np.int64)

  def read(self, indices: np.ndarray) -> np.ndarray:
    """Serialized records: int [K] -> object (bytes) [K]."""
    records = self._source.__getitems__([int(i) for i in indices])
    return np.asarray(records, dtype=object).reshape(len(records))

  def read_tf(self, indices: tf.Tensor) -> tf.Tensor:
    """In-graph `read`: int64 [K] -> string [K]."""
    out = tf.numpy_function(self.read, [indices], tf.string, stateful=False)
    return tf.ensure_shape(out, indices.shape)

  def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """In-graph decoding of one record: phrases string ragged [C, (P), (L)], phrase_regions int32
    ragged [C, (P)], the rest as dense tensors."""
    return self.features.deserialize_example(serialized)


def read_dataset(directory: str, split: str) -> tf.data.Dataset:
  """The image records of a split, in written order, as dicts of (ragged) tensors."""
  source = RecordSource(directory, split)
  ds = tf.data.Dataset.range(source.num_images).batch(64)
  ds = ds.map(source.read_tf).unbatch()
  return ds.map(source.parse, num_parallel_calls=tf.data.AUTOTUNE)


def num_images(directory: str, split: str) -> int:
  """Number of image records in a split."""
  return RecordSource(directory, split).num_images


def read_metadata(directory: str) -> dict[str, Any]:
  """The dataset-level metadata written with the splits."""
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no metadata; write a split with write_dataset first.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def save_vocabularies(directory: str, tokenizer_path: str,
                      concept_vocab: concepts.ConceptVocab) -> None:
  """Copies the tokenizer file beside the data and writes `id2phrase.json`."""
  os.makedirs(directory, exist_ok=True)
  name = 'vocab.txt' if tokenizer_path.endswith('.txt') else os.path.basename(tokenizer_path)
  if os.path.abspath(tokenizer_path) != os.path.abspath(os.path.join(directory, name)):
    shutil.copyfile(tokenizer_path, os.path.join(directory, name))
  concept_vocab.save(os.path.join(directory, CONCEPTS_FILE))


def load_vocabularies(directory: str) -> tuple[tokenizers.Tokenizer, concepts.ConceptVocab]:
  """The tokenizer (vocab.txt or one *.model) and concept vocabulary stored beside the data."""
  candidates = [n for n in sorted(os.listdir(directory))
                if n == 'vocab.txt' or n.endswith('.model')]
  if len(candidates) != 1:
    raise FileNotFoundError(f'{directory}: expected exactly one tokenizer file (vocab.txt or '
                            f'*.model), found {candidates}.')
  tokenizer = tokenizers.load_tokenizer(os.path.join(directory, candidates[0]))
  concepts_path = os.path.join(directory, CONCEPTS_FILE)
  if not os.path.exists(concepts_path):
    raise FileNotFoundError(f'{concepts_path}: concept vocabulary missing.')
  return tokenizer, concepts.ConceptVocab.load(concepts_path, tokenizer.vocab_size)


def _merged_metadata(directory: str, new: Mapping[str, Any]) -> dict[str, Any]:
  path = os.path.join(directory, METADATA_FILE)
  old = read_metadata(directory) if os.path.exists(path) else {}
  new = json.loads(json.dumps(dict(new)))  # Compare in JSON form (tuples become lists).
  clashes = {k: (old[k], v) for k, v in new.items() if k in old and old[k] != v}
  if clashes:
    raise ValueError(f'{path}: metadata of this split disagrees with the stored one '
                     f'(key: (stored, new)): {clashes}.')
  return {**old, **new}


def _is_str_list(value: Any) -> bool:
  return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f'{value.dtype} array {list(value.shape)}'
  if isinstance(value, (list, tuple)):
    return f'{type(value).__name__} of length {len(value)}'
  return type(value).__name__
