r"""TFDS builders of image records (input_pipeline/features.py) from real image-text sources.

  builder = builders.KarpathyCoco(features='/data/coco_features',   # or checkpoint=... (SigLIP)
                                  data_dir='/data/tfds')      # config 'captions5' (default)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir='/data/coco'))                               # dataset_coco.json + images
  tfds.data_source('karpathy_coco', split='test', data_dir='/data/tfds')   # random access
  tfds.load('karpathy_coco', split='test', data_dir='/data/tfds')          # tf.data

The same with TFDS's command line (the front-end kwargs go in the name, front_end.py):
  tfds build --imports=input_pipeline.sources.builders --manual_dir=/data/coco \
      --data_dir=/data/tfds 'karpathy_coco/captions5/features=/data/coco_features'
The front-end is recorded in the built dataset's metadata.json ('front_end'); building into a
data_dir that holds a build with another front-end is an error (unless overwriting).

Each builder is a `tfds.core.GeneratorBasedBuilder` (`_TwoFormatBuilder`, which the VinVL and
task builders of import_builders.py share) writing every shard twice with exactly the feature
spec of storage.record_features: as tfrecord, the main format, which `tfds.load` /
`as_dataset` read (TFDS 4.9's ArrayRecordFileAdapter.make_tf_data raises NotImplementedError),
and as array_record (`alternative_file_formats`), which `tfds.data_source` / `as_data_source`
pick and layout.py links into the storage layout without rewriting it. `file_format=
'array_record'` writes array_record only (half the disk; no `tfds.load`). Examples are keyed by
(shard index, position) and written in key order (`disable_shuffling`): Karpathy order inside
every split, shard order for webdataset. The same shard function produces the examples in one
Python loop or as one Beam element per shard (`use_beam=True`; runner and options from
`DownloadConfig(beam_runner=..., beam_options=...)`), so both paths write the same records in
the same order. Each shard's skipped samples (kind, shard, key) go to
REPORTS/<split>/<shard>.json (REPORTS: `report_dir`, default `<data_dir>.reports`); the build
fails when more than `max_error_fraction` of a split's samples were skipped.
"""

import os
from typing import Optional, Sequence

import tensorflow_datasets as tfds
from tensorflow_datasets.core import writer as writer_lib

from input_pipeline import optional
from input_pipeline import storage
from input_pipeline.sources import coco_captions
from input_pipeline.sources import front_end
from input_pipeline.sources import hf_table
from input_pipeline.sources import karpathy
from input_pipeline.sources import samples as samples_lib
from input_pipeline.sources import webdataset

_RANDOM_ACCESS = tfds.core.FileFormat.ARRAY_RECORD
_TFDS_KWARGS = ('data_dir', 'config', 'version', 'file_format')
_FRONT_END_KWARGS = ('features', 'checkpoint', 'grid', 'batch_size', 'labels', 'phrases',
                     'use_beam', 'max_error_fraction', 'report_dir', 'regions')
_MAX_PER_SHARD = 10_000_000  # example key = shard index * _MAX_PER_SHARD + position


class SourceBuildError(ValueError):
  """Too many samples of a split were skipped; names the report."""


class _ShardWork:
  """One shard -> [(key, example)]; picklable (a Beam FlatMap function)."""

  def __init__(self, source, regions, phrases, split, report_dir):
    self.source, self.regions, self.phrases = source, regions, phrases
    self.split, self.report_dir = split, report_dir

  def __call__(self, item):
    index, shard = item
    records, problems, read = samples_lib.shard_records(self.source, self.regions, self.phrases,
                                                        shard)
    if len(records) >= _MAX_PER_SHARD:
      raise ValueError(f'shard {shard}: more than {_MAX_PER_SHARD} samples.')
    examples = [(index * _MAX_PER_SHARD + i, storage.validate_record(r, i))
                for i, r in enumerate(records)]
    samples_lib.write_problems(self.report_dir, self.split, shard, problems, read, len(records))
    return examples


class _TwoFormatBuilder(tfds.core.GeneratorBasedBuilder):
  """Every shard in the main format and in array_record; what all our builders share.

  Subclasses give `_info` through `_records_info(features, description)`; `built_features()`
  is the feature spec of a dataset already built in data_dir (reading it back by name).
  Examples must be yielded in key order (`disable_shuffling`).
  """

  def built_features(self) -> Optional[tfds.features.FeaturesDict]:
    """The features of the dataset built in data_path (its features.json), or None."""
    if not (self.data_path / 'features.json').exists():
      return None
    return tfds.features.FeatureConnector.from_config(os.fspath(self.data_path))

  def _records_info(self, features, description: str) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=description, features=features, disable_shuffling=True,
        alternative_file_formats=[_RANDOM_ACCESS], metadata=tfds.core.MetadataDict(),
        homepage='https://github.com/Junyang-Li/MVPTR')

  def _example_writer(self) -> writer_lib.ExampleWriter:
    # Every shard in the main format (tfrecord unless file_format= says otherwise: tf.data) and
    # in array_record (random access; the pipeline's reader). TFDS's MultiOutputExampleWriter
    # writes one after the other from a tee, so a shard's serialized examples are held in
    # memory once while writing it (bounded by the shard size, DownloadConfig.max_shard_size).
    formats = dict.fromkeys([self.info.file_format, _RANDOM_ACCESS])
    return writer_lib.MultiOutputExampleWriter([writer_lib.ExampleWriter(f) for f in formats])


class _RecordsBuilder(_TwoFormatBuilder):
  """Shared machinery; subclasses define `_source(manual_dir)`."""

  VERSION = tfds.core.Version('1.0.0')
  SOURCE_KWARGS = ()  # the source's own kwargs (subclasses)
  RELEASE_NOTES = {'1.0.0': 'mvp-jax image records: SigLIP or given regions, phrases, captions.'}

  def __init__(self, *, regions=None, features=None, checkpoint=None, grid=None,
               batch_size=None, labels=None, phrases=None, use_beam: Optional[bool] = None,
               max_error_fraction: float = 0.01, report_dir: Optional[str] = None, **kwargs):
    unknown = sorted(set(kwargs) - set(_TFDS_KWARGS))
    if unknown:
      raise front_end.BuilderKwargError(
          f'{self.name}: unknown builder kwarg {unknown[0]}={kwargs[unknown[0]]!r}; accepted: '
          f'{", ".join(self.SOURCE_KWARGS + _FRONT_END_KWARGS + _TFDS_KWARGS)}.')
    parsed = front_end.parse(self.name, regions=regions, features=features,
                             checkpoint=checkpoint, grid=grid, batch_size=batch_size,
                             labels=labels, phrases=phrases, use_beam=use_beam,
                             max_error_fraction=max_error_fraction, report_dir=report_dir)
    self._regions, self._phrases = parsed['regions'], parsed['phrases']
    self._use_beam, self._max_error_fraction = parsed['use_beam'], parsed['max_error_fraction']
    self._split_shards = {}
    super().__init__(**kwargs)
    # Fixed now: during generation data_dir is a temporary 'incomplete' folder.
    self.report_dir = parsed['report_dir'] or os.fspath(self.data_dir).rstrip('/') + '.reports'

  def front_end(self) -> Optional[dict]:
    """The region front-end this builder was given (front_end.settings), or None."""
    return None if self._regions is None else front_end.settings(self._regions, self._phrases)

  def recorded_front_end(self) -> Optional[dict]:
    """The front-end a built dataset was built with (its metadata.json), or None."""
    return self.info.metadata.get('front_end') if self.info.metadata is not None else None

  def _info(self) -> tfds.core.DatasetInfo:
    # Reading a built dataset by name (tfds.load / tfds.data_source / tfds.builder): the region
    # width is the one it was built with.
    features = (storage.record_features(self._regions.feature_dim)
                if self._regions is not None else self.built_features())
    if features is None:
      raise ValueError(f'{self.name}: no built dataset in {self.data_path}; to build it pass '
                       'features=DIR or checkpoint=CKPT (or regions=regions.GivenRegions(...) / '
                       'regions.SiglipRegions(...)); with `tfds build`: '
                       f'{self.name}/features=DIR.')
    return self._records_info(
        features, f'mvp-jax image records from {self.name} (input_pipeline/features.py).')

  def _source(self, manual_dir) -> samples_lib.Source:
    """The source; `manual_dir()` gives the manual folder (only called when it is needed)."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    source = self._source(lambda: os.fspath(dl_manager.manual_dir))
    self._split_shards = source.splits()
    self.info.metadata['front_end'] = self.front_end()
    return {split: self._generate_examples(source, split, shards)
            for split, shards in self._split_shards.items()}

  def _generate_examples(self, source, split: str, shards: Sequence[str]):
    work = _ShardWork(source, self._regions, self._phrases, split, self.report_dir)
    items = list(enumerate(shards))
    if self._use_beam:
      beam = optional.require('apache_beam', f'{self.name}: use_beam=True')
      return (f'Shards_{split}' >> beam.Create(items) | f'Records_{split}' >> beam.FlatMap(work))
    return (example for item in items for example in work(item))

  def download_and_prepare(self, *args, **kwargs):
    recorded, given = self.recorded_front_end(), self.front_end()
    config = kwargs.get('download_config') or tfds.download.DownloadConfig()
    if (self.is_prepared() and recorded is not None and given is not None and recorded != given
        and not config.download_mode.overwrite_dataset):
      raise front_end.BuilderKwargError(
          f'{self.name}: {self.data_path} was built with front-end {recorded}, not the given '
          f'{given}; use another data_dir or overwrite (`tfds build --overwrite`).')
    return super().download_and_prepare(*args, **kwargs)

  def _download_and_prepare(self, dl_manager, download_config):
    if self._use_beam is None:  # `tfds build --beam_pipeline_options=...` asks for Beam.
      self._use_beam = download_config.beam_options is not None
    out = super()._download_and_prepare(dl_manager, download_config)
    for split, shards in self._split_shards.items():
      report = self.problems(split, shards)
      lost = 1 - report['records'] / max(report['samples_read'], 1)
      if lost > self._max_error_fraction:
        raise SourceBuildError(
            f'{self.name} {split}: {lost:.2%} of {report["samples_read"]} samples were skipped, '
            f'more than max_error_fraction={self._max_error_fraction:.2%} (by kind '
            f'{report["by_kind"]}); see {self.report_dir}/{split}/.')
    return out

  def problems(self, split: str, shards: Optional[Sequence[str]] = None) -> dict:
    """The merged skip report of a built split (samples.read_problems)."""
    if shards is None:
      folder = os.path.join(self.report_dir, split)
      shards = sorted(n[:-5] for n in os.listdir(folder) if n.endswith('.json'))
    return samples_lib.read_problems(self.report_dir, split, shards)


class KarpathyConfig(tfds.core.BuilderConfig):
  """captions_per_image: first N captions of every image (None: all)."""

  def __init__(self, *, captions_per_image: Optional[int], **kwargs):
    super().__init__(**kwargs)
    self.captions_per_image = captions_per_image


_KARPATHY_CONFIGS = [
    KarpathyConfig(name='captions5', captions_per_image=5,
                   description='5 captions per image (the standard retrieval protocol).'),
    KarpathyConfig(name='all_captions', captions_per_image=None,
                   description='every caption (COCO: some images have 6 or 7).'),
]


class KarpathyCoco(_RecordsBuilder):
  """COCO 2014 with Karpathy's train / restval / val / test splits.

  metadata.json records the COCO caption id of every kept caption as 'coco_caption_ids' {split:
  {image id: [id of caption k]}} (mvp_jax/evaluators/protocol.py's ECCV Caption / CxC metrics
  need them): matched by text from COCO's captions_val2014.json / captions_train2014.json when
  they are in the manual folder (or its annotations/), else Karpathy's sentids, which in
  dataset_coco.json are COCO's caption ids ('coco_caption_id_source' says which).
  """

  BUILDER_CONFIGS = _KARPATHY_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place in the manual folder: dataset_coco.json (Karpathy's splits, from
  https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip) and the COCO 2014
  image folders train2014/ and val2014/ (https://cocodataset.org/#download); optionally
  annotations/captions_val2014.json (COCO's 2014 train/val annotations zip) to match each
  caption's COCO id by text instead of taking Karpathy's sentids.
  """

  def _source(self, manual_dir):
    folder = manual_dir()
    self._karpathy = karpathy.KarpathySource(
        os.path.join(folder, 'dataset_coco.json'), folder,
        captions_per_image=self.builder_config.captions_per_image)
    return self._karpathy

  def _split_generators(self, dl_manager):
    generators = super()._split_generators(dl_manager)
    files = coco_captions.find_caption_files(os.fspath(dl_manager.manual_dir))
    self.info.metadata['coco_caption_files'] = [os.path.basename(f) for f in files]
    self.info.metadata['coco_caption_id_source'] = (
        'captions files' if files else 'karpathy sentids')
    self.info.metadata['coco_caption_ids'] = self._karpathy.coco_caption_ids(files)
    return generators


class KarpathyFlickr30k(_RecordsBuilder):
  """Flickr30K with Karpathy's train / val / test splits."""

  BUILDER_CONFIGS = _KARPATHY_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place in the manual folder: dataset_flickr30k.json (Karpathy's splits, from
  https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip) and the images,
  either directly or in flickr30k-images/ (https://shannon.cs.illinois.edu/DenotationGraph/).
  """

  def _source(self, manual_dir):
    folder = manual_dir()
    images = os.path.join(folder, 'flickr30k-images')
    return karpathy.KarpathySource(os.path.join(folder, 'dataset_flickr30k.json'),
                                   images if os.path.isdir(images) else folder,
                                   captions_per_image=self.builder_config.captions_per_image)


class WebdatasetShards(_RecordsBuilder):
  """img2dataset webdataset shards (CC3M, CC12M, LAION subsets): one 'train' split."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download with img2dataset (--output_format webdataset) and place the .tar shards in the manual
  folder, or pass shards=['/data/cc3m/{00000..00331}.tar'] to the builder.
  """

  SOURCE_KWARGS = ('shards',)

  def __init__(self, *, shards: Optional[Sequence[str]] = None, **kwargs):
    if isinstance(shards, str):  # one pattern (`tfds build`: webdataset_shards/shards=PATTERN)
      shards = [shards]
    if shards is not None and not all(isinstance(p, str) and p for p in shards):
      raise front_end.BuilderKwargError(f'{self.name}: builder kwarg shards={shards!r}: expected '
                                        'a path pattern or a list of them.')
    self._shard_patterns = list(shards) if shards else None
    super().__init__(**kwargs)

  def _source(self, manual_dir):
    return webdataset.WebdatasetSource(self._shard_patterns or [os.path.join(manual_dir(),
                                                                             '*.tar')])


class HfImageText(_RecordsBuilder):
  """A Hugging Face `datasets` table saved locally (save_to_disk folder or parquet files)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Save the table locally (dataset.save_to_disk(DIR) or parquet files) and pass DIR as the
  manual folder; name the columns with image_column=, text_column=, id_column=.
  """

  SOURCE_KWARGS = ('image_column', 'text_column', 'id_column', 'shard_size')

  def __init__(self, *, image_column: str = 'image', text_column: str = 'text',
               id_column: Optional[str] = None, shard_size: int = 1000, **kwargs):
    # `tfds build` casts a numeric column name to int.
    columns = {k: None if v is None else str(v) for k, v in (
        ('image_column', image_column), ('text_column', text_column), ('id_column', id_column))}
    empty = next((k for k, v in columns.items() if v == '' or (v is None and k != 'id_column')),
                 None)
    if empty:
      raise front_end.BuilderKwargError(f'{self.name}: builder kwarg {empty} is empty.')
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
      raise front_end.BuilderKwargError(f'{self.name}: builder kwarg shard_size={shard_size!r}: '
                                        'expected a positive integer.')
    self._columns = dict(columns, shard_size=shard_size)
    super().__init__(**kwargs)

  def _source(self, manual_dir):
    return hf_table.HfTableSource(manual_dir(), **self._columns)
