"""The record writing on Apache Beam (DirectRunner, 2 worker processes) writes exactly the
records of the single-process path: same ids, same order, same contents."""

import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline.sources import builders
from input_pipeline.sources import layout
from input_pipeline.sources import webdataset
import sources_fixtures as fx

beam = pytest.importorskip('apache_beam')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serialized(data_dir, split):
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  info = tfds.builder_from_directory(data_dir).info.splits[split]
  source = array_record_data_source.ArrayRecordDataSource(layout.record_files(info))
  return [source[i] for i in range(len(source))]


def test_beam_two_workers_equals_single_process(tmp_path, monkeypatch):
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  expected = fx.write_webdataset(tmp_path / 'wds', num_shards=6, per_shard=5)
  patterns = [str(tmp_path / 'wds' / '*.tar')]
  given = fx.given_features(webdataset.WebdatasetSource(patterns), tmp_path / 'features')

  single = builders.WebdatasetShards(shards=patterns, regions=given, max_error_fraction=0.5,
                                     data_dir=str(tmp_path / 'single'))
  single.download_and_prepare()
  options = beam.options.pipeline_options.PipelineOptions(
      direct_num_workers=2, direct_running_mode='multi_processing')
  parallel = builders.WebdatasetShards(shards=patterns, regions=given, max_error_fraction=0.5,
                                       data_dir=str(tmp_path / 'beam'), use_beam=True)
  parallel.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=options))

  a, b = _serialized(single.data_dir, 'train'), _serialized(parallel.data_dir, 'train')
  assert len(a) == len(expected['good']) == 31
  # Same records in the same order, compared as protos: a tf.train.Example's feature map is
  # serialised in an order that differs between processes, so the bytes may differ.
  parse = lambda records: [tf.train.Example.FromString(r) for r in records]
  assert parse(a) == parse(b)
  ids = [e.features.feature['image_id'].bytes_list.value[0].decode() for e in parse(b)]
  assert ids == expected['good']
  assert parse(a)[3] != parse(a)[4]
  assert single.problems('train') == parallel.problems('train')
  assert len(parallel.problems('train')['problems']) == 5
