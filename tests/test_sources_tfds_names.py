"""Every TFDS builder of input_pipeline/sources/builders.py, once built, reads back by its
registered name through `tfds.data_source` (array_record, random access), `tfds.load` (tfrecord,
tf.data) and `tfds.builder` (issue 14 item 1), with no region front-end passed: the region width
comes from the built dataset's features.json. Both readers give the same records in the same
order.
"""

import pytest
import tensorflow_datasets as tfds

from input_pipeline.sources import builders
from input_pipeline.sources import karpathy
import sources_fixtures as fx


def _coco(tmp_path):
  root = tmp_path / 'coco'
  splits = fx.write_karpathy_coco(root)
  source = karpathy.KarpathySource(root / 'dataset_coco.json', root)
  return (builders.KarpathyCoco(regions=fx.given_features(source, tmp_path / 'feat'),
                                data_dir=str(tmp_path / 'tfds')), root, splits)


def _flickr(tmp_path):
  root = tmp_path / 'fk'
  splits = fx.write_karpathy_flickr(root)
  source = karpathy.KarpathySource(root / 'dataset_flickr30k.json', root / 'flickr30k-images')
  return (builders.KarpathyFlickr30k(regions=fx.given_features(source, tmp_path / 'feat'),
                                     data_dir=str(tmp_path / 'tfds')), root, splits)


def _webdataset(tmp_path):
  root = tmp_path / 'shards'
  expected = fx.write_webdataset(root, num_shards=2, per_shard=3, corrupt=False)
  return (builders.WebdatasetShards(shards=[f'{root}/*.tar'], regions=fx.RandomRegions(),
                                    data_dir=str(tmp_path / 'tfds')), root,
          {'train': expected['good']})


def _hf(tmp_path):
  pytest.importorskip('datasets')
  root = tmp_path / 'hf'
  ids = fx.write_hf_dataset(root)
  return (builders.HfImageText(image_column='image', text_column='caption', id_column='photo_id',
                               regions=fx.RandomRegions(), data_dir=str(tmp_path / 'tfds')),
          root, ids)


@pytest.mark.parametrize('make, name', [(_coco, 'karpathy_coco/captions5'),
                                        (_flickr, 'karpathy_flickr30k/captions5'),
                                        (_webdataset, 'webdataset_shards'),
                                        (_hf, 'hf_image_text')])
def test_built_dataset_reads_back_by_name(make, name, tmp_path):
  builder, manual_dir, splits = make(tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  data_dir = str(tmp_path / 'tfds')
  for split, ids in splits.items():
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    assert [source[i]['image_id'].decode() for i in range(len(source))] == list(ids)
    assert source[0]['region_features'].shape[-1] == builder.info.features[
        'region_features'].shape[-1]
    loaded = list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))
    assert len(loaded) == len(source)
    for i, record in enumerate(loaded):
      assert sorted(record) == sorted(source[i])
      for key in record:
        assert fx.plain(record[key]) == fx.plain(source[i][key]), (split, i, key)
  by_name = tfds.builder(name, data_dir=data_dir)  # the registered class, without regions
  assert by_name.info.features.to_json() == builder.info.features.to_json()
  assert {s: by_name.info.splits[s].num_examples for s in splits} == {
      s: len(v) for s, v in splits.items()}


def test_a_builder_without_regions_and_without_built_data_says_what_to_pass(tmp_path):
  with pytest.raises(ValueError, match='no built dataset .* pass features=DIR or checkpoint='):
    builders.KarpathyCoco(data_dir=str(tmp_path))
