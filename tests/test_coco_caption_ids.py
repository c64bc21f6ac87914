"""COCO caption ids of the Karpathy COCO captions (issue 14 item 3, ECCV Caption / CxC): the
builder matches them from COCO's own captions files by (image id, text), or takes Karpathy's
sentids, and records them, and
mvp_jax/evaluators/protocol.py pairs similarity columns with exactly those ids. The fixture's
COCO ids run in another order than sorted, so the old pairing (caption k of an image = its k-th
smallest COCO caption id) gives other ids."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline.sources import builders
from input_pipeline.sources import coco_captions
from input_pipeline.sources import karpathy
from mvp_jax.evaluators import protocol
import sources_fixtures as fx

_ORDER = (3, 0, 4, 1, 2, 6, 5)  # COCO id rank of Karpathy's caption k (not ascending)


def _write_coco_captions(root) -> dict:
  """annotations/captions_{val,train}2014.json for the Karpathy fixture; {image id: [COCO id of
  Karpathy caption k]}. Texts differ from Karpathy's raw in spacing, case and final period (as
  COCO's do); the annotations are shuffled."""
  data = json.load(open(root / 'dataset_coco.json'))
  files, expected = {'val2014': [], 'train2014': []}, {}
  for image in data['images']:
    ids = [700000 + 100 * image['imgid'] + _ORDER[k] for k in range(len(image['sentences']))]
    expected[str(image['cocoid'])] = ids
    for k, (cid, sentence) in enumerate(zip(ids, image['sentences'])):
      text = sentence['raw'].replace(' ', '  ') + ' '
      if k == 1:
        text = sentence['raw'].rstrip(' .').capitalize() + '.'
      files[image['filepath']].append({'image_id': image['cocoid'], 'id': cid, 'caption': text})
  os.makedirs(root / 'annotations')
  for folder, annotations in files.items():
    annotations = [annotations[i] for i in np.random.default_rng(0).permutation(len(annotations))]
    with open(root / 'annotations' / f'captions_{folder}.json', 'w') as f:
      json.dump({'images': [], 'annotations': annotations}, f)
  return expected


def _build(root, tmp_path):
  karpathy.load_karpathy.cache_clear()
  source = karpathy.KarpathySource(root / 'dataset_coco.json', root)
  builder = builders.KarpathyCoco(regions=fx.given_features(source, tmp_path / 'feat'),
                                  data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return builder


def test_the_builder_records_each_captions_coco_id_by_text(tmp_path):
  root = tmp_path / 'coco'
  splits = fx.write_karpathy_coco(root)
  expected = _write_coco_captions(root)
  builder = _build(root, tmp_path)
  image_ids, caption_ids = protocol.built_caption_ids(builder.data_dir, 'test')
  assert image_ids == splits['test']
  want = np.concatenate([expected[i][:5] for i in image_ids])
  np.testing.assert_array_equal(caption_ids, want)
  old_pairing = np.sort(want.reshape(-1, 5), axis=1).ravel()  # the k-th smallest id
  assert not np.array_equal(old_pairing, caption_ids)
  recorded = tfds.builder('karpathy_coco/captions5', data_dir=str(tmp_path / 'tfds')).info.metadata
  assert recorded['coco_caption_files'] == ['captions_val2014.json', 'captions_train2014.json']
  assert recorded['coco_caption_ids']['train'] == {i: expected[i][:5] for i in splits['train']}


def test_without_captions_files_karpathys_sentids_are_the_ids(tmp_path):
  """Karpathy's dataset_coco.json gives each sentence COCO's caption id as its sentid; without
  COCO's captions files those are recorded. A caption with no sentid leaves its image without
  ids, and the protocol then refuses that split instead of guessing."""
  root = tmp_path / 'coco'
  splits = fx.write_karpathy_coco(root)
  data = json.load(open(root / 'dataset_coco.json'))
  sentids = {str(im['cocoid']): [s['sentid'] for s in im['sentences']][:5]
             for im in data['images']}
  builder = _build(root, tmp_path)
  image_ids, caption_ids = protocol.built_caption_ids(builder.data_dir, 'test')
  np.testing.assert_array_equal(caption_ids, np.concatenate([sentids[i] for i in image_ids]))
  assert builder.info.metadata['coco_caption_id_source'] == 'karpathy sentids'

  first_test = next(im for im in data['images'] if im['split'] == 'test')
  del first_test['sentences'][0]['sentid']
  (root / 'dataset_coco.json').write_text(json.dumps(data))
  builder = _build(root, tmp_path / 'again')
  with pytest.raises(ValueError, match=f"no COCO caption ids for image {first_test['cocoid']}"):
    protocol.built_caption_ids(builder.data_dir, 'test')
  assert splits['test'][0] == str(first_test['cocoid'])
  with pytest.raises(ValueError, match='needs the COCO caption id of every column'):
    protocol.eccv_metrics(np.zeros((5000, 25000), np.float16))


def test_a_caption_without_a_unique_match_is_named():
  table = {'7': [(10, 'A dog runs.'), (11, 'a cat  sleeps '), (12, 'a cat sleeps'),
                 (13, 'two boats')]}
  assert coco_captions.match_caption_ids(table, '7', ['a dog runs', 'two boats'], [None] * 2,
                                         'x') == [10, 13]
  assert coco_captions.match_caption_ids(table, '8', ['a dog'], [None], 'x') is None
  # Two COCO captions with the same text: Karpathy's sentid picks one, else it is an error.
  assert coco_captions.match_caption_ids(table, '7', ['a cat sleeps'], [12], 'x') == [12]
  with pytest.raises(coco_captions.CaptionIdError,
                     match=r"x \(image 7\) caption 0 'a cat sleeps': matches 2 COCO captions "
                           r'\[11, 12\]'):
    coco_captions.match_caption_ids(table, '7', ['a cat sleeps'], [None], 'x')
  with pytest.raises(coco_captions.CaptionIdError,
                     match=r"caption 1 'a horse': matches no COCO caption"):
    coco_captions.match_caption_ids(table, '7', ['two boats', 'a horse'], [None] * 2, 'x')
  with pytest.raises(coco_captions.CaptionIdError, match='some twice'):
    coco_captions.match_caption_ids(table, '7', ['two boats', 'Two boats.'], [None] * 2, 'x')


def test_a_broken_captions_file_is_named(tmp_path):
  path = tmp_path / 'captions_val2014.json'
  path.write_text(json.dumps({'annotations': [{'image_id': 1, 'id': 'x', 'caption': 'a'}]}))
  with pytest.raises(coco_captions.CaptionIdError, match=r'annotations\[0\] needs int "id"'):
    coco_captions.load_caption_table([str(path)])
