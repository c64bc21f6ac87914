"""`tfds build` (TFDS's own command line, run in-process) on our builders, region front-end
passed as builder kwargs in the dataset name (issue 14 item 1): it writes exactly what
`mvp-sources build` writes, records the front-end so reading back by name needs none of it,
and names a bad kwarg."""

import json

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import main as tfds_main

from input_pipeline.sources import build
from input_pipeline.sources import front_end
from input_pipeline.sources import karpathy
import sources_fixtures as fx

_IMPORTS = '--imports=input_pipeline.sources.builders'


def _tfds_build(*argv):
  # What the `tfds` console script (launch_cli) runs, in this process.
  parse = tfds_main._parse_flags  # pylint: disable=protected-access
  tfds_main.main(parse(['tfds', 'build', _IMPORTS, *argv]))


def _same_records(name, data_dir_a, data_dir_b, splits):
  for split in splits:
    a = tfds.data_source(name, split=split, data_dir=data_dir_a)
    b = tfds.data_source(name, split=split, data_dir=data_dir_b)
    assert len(a) == len(b) > 0, split
    for i in range(len(a)):
      assert sorted(a[i]) == sorted(b[i])
      for key in a[i]:
        assert fx.plain(a[i][key]) == fx.plain(b[i][key]), (split, i, key)
    loaded = list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir_a)))
    assert [r['image_id'] for r in loaded] == [b[i]['image_id'] for i in range(len(b))]
    for record, i in zip(loaded, range(len(b))):
      assert fx.plain(record['region_features']) == fx.plain(b[i]['region_features'])
      assert fx.plain(record['phrases']) == fx.plain(b[i]['phrases'])


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli')
  splits = fx.write_karpathy_coco(root / 'coco')
  source = karpathy.KarpathySource(root / 'coco' / 'dataset_coco.json', root / 'coco')
  fx.given_features(source, root / 'feat')
  phrases = {i: [[['dog'], ['dog', 'brown']]] * 7 for ids in splits.values() for i in ids}
  (root / 'coco_sg.json').write_text(json.dumps(phrases))
  return root, splits


def test_tfds_build_with_given_features_and_phrases_equals_mvp_sources(coco, tmp_path):
  root, splits = coco
  _tfds_build(f'karpathy_coco/captions5/features={root}/feat,phrases={root}/coco_sg.json',
              f'--manual_dir={root}/coco', f'--data_dir={tmp_path}/cli')
  assert build.main(['build', '--source=karpathy_coco', f'--manual_dir={root}/coco',
                     f'--features={root}/feat', f'--phrases={root}/coco_sg.json',
                     '--config=captions5', f'--data_dir={tmp_path}/ours']) == 0
  name = 'karpathy_coco/captions5'
  _same_records(name, f'{tmp_path}/cli', f'{tmp_path}/ours', splits)
  record = tfds.data_source(name, split='test', data_dir=f'{tmp_path}/cli')[0]
  assert fx.plain(record['phrases'][0]) == [[b'dog'], [b'dog', b'brown']]
  # Read back by name with no front-end: recorded in the built dataset.
  by_name = tfds.builder(name, data_dir=f'{tmp_path}/cli')
  recorded = by_name.recorded_front_end()
  assert recorded == tfds.builder(name, data_dir=f'{tmp_path}/ours').recorded_front_end()
  assert recorded['regions']['features'] == f'{root}/feat'
  assert recorded['regions']['class'] == 'GivenRegions'
  assert recorded['phrases'] == f'{root}/coco_sg.json'
  assert by_name.info.features['region_features'].shape[-1] == fx.FEATURE_DIM
  # The same data_dir with another front-end is refused, not silently reused.
  other = tmp_path / 'feat2'
  fx.given_features(karpathy.KarpathySource(root / 'coco' / 'dataset_coco.json', root / 'coco'),
                    other)
  with pytest.raises(front_end.BuilderKwargError, match='was built with front-end'):
    _tfds_build(f'{name}/features={other}', f'--manual_dir={root}/coco',
                f'--data_dir={tmp_path}/cli')


def test_tfds_build_with_siglip_inline_equals_mvp_sources(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  ckpt = fx.tiny_siglip(tmp_path / 'siglip')
  shards = tmp_path / 'shards'
  expected = fx.write_webdataset(shards, num_shards=2, per_shard=2, corrupt=False)
  siglip = f'checkpoint={ckpt},grid=2,batch_size=8,labels={ckpt}/labels.txt'
  _tfds_build(f'webdataset_shards/shards={shards}/{{00000..00001}}.tar,{siglip}',
              f'--data_dir={tmp_path}/cli')
  assert build.main(['build', '--source=webdataset', f'--shards={shards}/{{00000..00001}}.tar',
                     f'--checkpoint={ckpt}', '--grid=2', '--batch_size=8',
                     f'--labels={ckpt}/labels.txt', f'--data_dir={tmp_path}/ours']) == 0
  _same_records('webdataset_shards', f'{tmp_path}/cli', f'{tmp_path}/ours', ['train'])
  source = tfds.data_source('webdataset_shards', split='train', data_dir=f'{tmp_path}/cli')
  assert [source[i]['image_id'].decode() for i in range(len(source))] == expected['good']
  assert source[0]['region_features'].shape == (5, 16 + 6)  # 2 x 2 grid + the whole image
  recorded = tfds.builder('webdataset_shards', data_dir=f'{tmp_path}/cli').recorded_front_end()
  assert recorded['regions']['class'] == 'SiglipRegions'
  assert (recorded['regions']['grid'], recorded['regions']['batch_size']) == (2, 8)
  assert recorded['regions']['labels_file'] == f'{ckpt}/labels.txt'


@pytest.mark.parametrize('kwargs, message', [
    ('featres=FEAT', r'unknown builder kwarg featres=.*accepted: features, checkpoint'),
    ('features=FEAT,grid=7', r'builder kwarg grid=7: only used with checkpoint='),
    ('checkpoint=FEAT,grid=0', r'builder kwarg grid=0: expected a positive integer'),
    ('checkpoint=FEAT,batch_size=big', r"builder kwarg batch_size='big': expected a positive"),
    ('features=FEAT,checkpoint=FEAT', r'builder kwarg checkpoint=.*not both features= and'),
    ('features=/no/such/dir', r"builder kwarg features='/no/such/dir': no such folder"),
    ('features=MANUAL', r'builder kwarg features=.*not a features folder'),
    ('features=FEAT,phrases=/no/such.json', r'builder kwarg phrases=.*no such file'),
    ('features=FEAT,max_error_fraction=2', r'max_error_fraction=2: expected a number in'),
])
def test_a_bad_kwarg_is_named(coco, tmp_path, kwargs, message):
  root, _ = coco
  kwargs = kwargs.replace('FEAT', f'{root}/feat').replace('MANUAL', f'{root}/coco')
  with pytest.raises(front_end.BuilderKwargError, match=message):
    _tfds_build(f'karpathy_coco/captions5/{kwargs}', f'--manual_dir={root}/coco',
                f'--data_dir={tmp_path}')
