"""Tests of the VinVL importer: input_pipeline/vinvl.py and input_pipeline/import_vinvl.py."""

import json
import os

import numpy as np
import pytest

from input_pipeline import captions as captions_lib
from input_pipeline import import_vinvl
from input_pipeline import storage
from input_pipeline import vinvl
from input_pipeline.vinvl_rows import VinvlImportError, VinvlOptions, new_report
import vinvl_fixtures as fx


def _rng(seed=0):
  return np.random.default_rng(seed)


def _images(ids, seed=0):
  rng = _rng(seed)
  return {i: fx.make_image(rng, i, num_boxes=2 + n % 3) for n, i in enumerate(ids)}


def _no_phrases(image_id, k, caption):
  del image_id, k, caption
  return []


def _records(tmp_path, feature_lines, prediction_lines, captions, options=VinvlOptions(),
             on_error='skip', phrases_for=_no_phrases, **tsv_kwargs):
  features = fx.write_tsv(tmp_path / 'features.tsv', feature_lines, **tsv_kwargs)
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv', prediction_lines)
  report = new_report(on_error=on_error, max_messages=100)
  records = list(vinvl.iter_vinvl_records(features, predictions, captions, phrases_for, report,
                                          options))
  return records, report, features, predictions


def test_records_round_trip_and_join_by_id_not_row_order(tmp_path):
  images = _images(['11', '22', '33'])
  captions = {'22': ['a man rides', 'a horse'], '33': ['a dog'], '11': ['x', 'y', 'z']}
  feature_order, prediction_order = ['33', '11', '22'], ['22', '33', '11']
  records, report, _, _ = _records(
      tmp_path, [fx.feature_line(i, images[i].features()) for i in feature_order],
      [fx.prediction_line(images[i]) for i in prediction_order], captions)
  assert not report.problems
  assert [r['image_id'] for r in records] == feature_order  # streamed in features order
  for record in records:
    image = images[record['image_id']]
    expected = image.features()
    assert record['region_features'].dtype == np.float32
    assert record['region_features'].tobytes() == expected.tobytes()  # bit-exact
    np.testing.assert_array_equal(record['boxes'], image.rects)
    assert record['tags'] == image.classes
    assert record['captions'] == captions[record['image_id']]
    assert record['image_size'].tolist() == [480, 640]
    assert record['image_png'] == b''
    assert record['phrases'] == [[]] * len(captions[record['image_id']])
    assert record['phrase_regions'] == [[]] * len(captions[record['image_id']])
  assert report.stats['records'] == 3


def test_2048_dim_features_get_the_normalised_box(tmp_path):
  image = fx.make_image(_rng(1), '7', num_boxes=3, height=300, width=500)
  records, report, _, _ = _records(tmp_path, [fx.feature_line('7', image.roi)],
                                   [fx.prediction_line(image)], {'7': ['c']})
  assert not report.problems
  feats = records[0]['region_features']
  assert feats.shape == (3, 2054)
  assert feats[:, :2048].tobytes() == image.roi.tobytes()
  x1, y1, x2, y2 = image.rects.astype(np.float64).T
  expected = np.stack([x1 / 500, y1 / 300, x2 / 500, y2 / 300, (x2 - x1) / 500,
                       (y2 - y1) / 300], 1)
  np.testing.assert_allclose(feats[:, 2048:], expected, rtol=1e-6)
  assert feats[0, 2048] == np.float32(image.rects[0, 0] / 500)


def _corrupt_inputs():
  """Feature and prediction lines with one problem of each kind; see the expected lines below."""
  images = _images(list('abcdefghijk'), seed=2)
  feats = {i: img.features() for i, img in images.items()}
  nan = feats['e'].copy()
  nan[1, 5] = np.nan
  wrong_box = feats['j'].copy()
  wrong_box[0, -1] += 0.25
  feature_lines = [
      fx.feature_line('a', feats['a']),                     # 1 good
      'b\t2\t@@not base64@@',                               # 2 bad_base64
      fx.feature_line('c', feats['c'][:, :-1]),             # 3 bad_length (4106 per box)
      fx.feature_line('d', feats['d'], num_boxes=7),        # 4 bad_length (count mismatch)
      fx.feature_line('e', nan),                            # 5 non_finite
      fx.feature_line('a', feats['b']),                     # 6 duplicate_id
      'k\tonly two fields',                                 # 7 bad_row
      fx.feature_line('f', feats['f']),                     # 8 (prediction is bad)
      fx.feature_line('i', feats['i'][:1]),                 # 9 box_count_mismatch
      fx.feature_line('j', wrong_box),                      # 10 box_mismatch
      fx.feature_line('k', feats['k']),                     # 11 good
  ]
  prediction_lines = [fx.prediction_line(images[i]) for i in 'abcdeijk']
  prediction_lines += ['f\t{"objects": [', fx.prediction_line(images['g'], image_h=None)]
  captions = {i: [f'caption of {i}'] for i in 'abcdefghijk'}  # h: no rows at all
  return images, feature_lines, prediction_lines, captions


def test_corrupt_rows_are_counted_with_file_and_line(tmp_path):
  images, feature_lines, prediction_lines, captions = _corrupt_inputs()
  records, report, features, predictions = _records(tmp_path, feature_lines, prediction_lines,
                                                    captions)
  assert [r['image_id'] for r in records] == ['a', 'k']
  assert records[0]['region_features'].tobytes() == images['a'].features().tobytes()
  assert dict(report.problems) == {
      'bad_base64': 1, 'bad_length': 2, 'non_finite': 1, 'duplicate_id': 1, 'bad_row': 1,
      'bad_json': 1, 'missing_image_size': 1, 'box_count_mismatch': 1, 'box_mismatch': 1,
      'missing_predictions': 1}
  expected_lines = {2: 'bad_base64', 3: 'bad_length', 4: 'bad_length', 5: 'non_finite',
                    6: 'duplicate_id', 7: 'bad_row', 9: 'box_count_mismatch',
                    10: 'box_mismatch'}
  for line, kind in expected_lines.items():
    assert any(m.startswith(f'{features}:{line}: {kind}') for m in report.messages), (line, kind)
  assert any(m.startswith(f'{predictions}:9: bad_json') for m in report.messages)
  assert any(m.startswith(f'{predictions}:10: missing_image_size') for m in report.messages)
  assert any("missing_predictions: no row for captioned image 'h'" in m for m in report.messages)
  assert report.stats['caption_images'] == 0  # counted by the caption loader, not here


def test_caption_without_features_is_missing_features(tmp_path):
  images = _images(['1', '2'])
  _, report, features, _ = _records(
      tmp_path, [fx.feature_line('1', images['1'].features())],
      [fx.prediction_line(images[i]) for i in '12'], {'1': ['a'], '2': ['b']})
  assert dict(report.problems) == {'missing_features': 1}
  assert report.messages == [f"{features}: missing_features: no row for captioned image '2'"]


def test_raise_policy_stops_at_the_first_problem(tmp_path):
  _, feature_lines, prediction_lines, captions = _corrupt_inputs()
  with pytest.raises(VinvlImportError, match=r'predictions.tsv:9: bad_json'):
    _records(tmp_path, feature_lines, prediction_lines, captions, on_error='raise')


def test_index_gives_random_access_in_caption_order(tmp_path):
  images = _images(['5', '6', '7'])
  order = ['7', '5', '6']
  lines = [fx.feature_line(i, images[i].features()) for i in order]
  lines.insert(1, 'garbage row never read')
  captions = {'6': ['six'], '7': ['seven'], '5': ['five']}
  predictions = [fx.prediction_line(images[i]) for i in '567']
  records, report, _, _ = _records(tmp_path, lines, predictions, captions, lineidx=True,
                                   index_ids=['7', 'garbage', '5', '6'])
  assert not report.problems  # the garbage row is never sought
  assert [r['image_id'] for r in records] == ['6', '7', '5']
  for record in records:
    assert record['region_features'].tobytes() == images[record['image_id']].features().tobytes()
  _, report, _, _ = _records(tmp_path, lines, predictions, captions, lineidx=True,
                             index_ids=['7', 'garbage', '5', '6'],
                             options=VinvlOptions(use_index=False))
  assert dict(report.problems) == {'bad_row': 1}


def test_index_pointing_at_the_wrong_row_is_caught(tmp_path):
  images = _images(['5', '6'])
  lines = [fx.feature_line(i, images[i].features()) for i in '56']
  records, report, features, _ = _records(
      tmp_path, lines, [fx.prediction_line(images[i]) for i in '56'], {'5': ['a'], '6': ['b']},
      lineidx=True, index_ids=['6', '5'])
  assert records == []
  assert dict(report.problems) == {'bad_index': 2}
  assert report.messages[0] == (f"{features}:2: bad_index: imageid2idx.json points '5' to the "
                                "row of '6'")


def test_unreadable_index_falls_back_to_file_order(tmp_path):
  images = _images(['5'])
  features = fx.write_tsv(tmp_path / 'features.tsv', [fx.feature_line('5', images['5'].roi)],
                          lineidx=True)
  with open(tmp_path / 'imageid2idx.json', 'w') as f:
    f.write('{"5": 0, "5": 0}')
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv', [fx.prediction_line(images['5'])])
  report = new_report()
  records = list(vinvl.iter_vinvl_records(features, predictions, {'5': ['a']}, _no_phrases,
                                          report, VinvlOptions()))
  assert [r['image_id'] for r in records] == ['5']
  assert dict(report.problems) == {'bad_index': 1}


def test_normalised_ids_join_prefixed_rows(tmp_path):
  images = _images(['COCO_val2014_000000000042'])
  image = images['COCO_val2014_000000000042']
  records, report, _, _ = _records(
      tmp_path, [fx.feature_line(image.image_id, image.features())],
      [fx.prediction_line(image)], {'42': ['a cat']}, options=VinvlOptions(normalize_ids=True))
  assert not report.problems
  assert records[0]['image_id'] == '42'
  assert records[0]['captions'] == ['a cat']


def test_prefer_gt_objects_only_when_aligned(tmp_path):
  images = _images(['1', '2'])  # 2 and 3 boxes
  gt = {'1': ['cat', 'cat'], '2': ['cat']}
  records, report, _, _ = _records(
      tmp_path, [fx.feature_line(i, images[i].features()) for i in '12'],
      [fx.prediction_line(images[i], gt_classes=gt[i]) for i in '12'], {'1': ['a'], '2': ['b']},
      options=VinvlOptions(prefer_gt_objects=True))
  assert records[0]['tags'] == ['cat', 'cat']
  assert records[1]['tags'] == images['2'].classes
  assert dict(report.warnings) == {'gt_objects_unaligned': 1}
  assert not report.problems


def test_extract_variant(tmp_path):
  rng = _rng(3)
  image = fx.make_image(rng, 'photo1', num_boxes=3)
  bad = fx.make_image(rng, 'photo2', num_boxes=2)
  bad_line = fx.extract_line(bad).replace('"predictions": [', '"predictions": ["extra", ')
  path = fx.write_tsv(tmp_path / 'predictions.tsv', [fx.extract_line(image), bad_line])
  report = new_report()
  captions = {'photo1': ['a'], 'photo2': ['b']}
  records = list(vinvl.iter_extract_records(path, captions, _no_phrases, report, VinvlOptions()))
  assert import_vinvl.detect_source_format(path) == 'extract'
  assert [r['image_id'] for r in records] == ['photo1']
  record = records[0]
  assert record['region_features'].tobytes() == image.features().tobytes()
  assert record['image_size'].tolist() == [1, 1]
  np.testing.assert_array_equal(record['boxes'], image.features()[:, -6:-2])
  assert record['tags'] == image.classes
  assert dict(report.problems) == {'bad_length': 1}  # 2 boxes of data, 3 tags
  assert report.messages[0].startswith(f'{path}:2: bad_length')


def test_phrases_are_attached_per_caption(tmp_path):
  images = _images(['1'])
  table = {('1', 0): [('dog',)], ('1', 1): [('man', 'ride', 'horse')]}
  report = new_report()
  phrases_for = import_vinvl.make_phrases_for(None, table, 'sg.json', None, report)
  records, _, _, _ = _records(tmp_path, [fx.feature_line('1', images['1'].features())],
                              [fx.prediction_line(images['1'])], {'1': ['a', 'b', 'c']},
                              phrases_for=phrases_for)
  assert records[0]['phrases'] == [[('dog',)], [('man', 'ride', 'horse')], []]
  assert records[0]['phrase_regions'] == [[-1], [-1], []]
  assert dict(report.warnings) == {'missing_phrases': 1}


def _load(*args, **kwargs):
  caption_set = captions_lib.load_captions(*args, **kwargs)
  return caption_set.captions, caption_set.embedded


def test_caption_formats(tmp_path):
  karpathy = {'images': [
      {'cocoid': 9, 'filename': 'COCO_x_9.jpg', 'split': 'train',
       'sentences': [{'raw': 'A dog. '}, {'raw': 'a cat'}]},
      {'cocoid': 8, 'split': 'test', 'sentences': [{'raw': 'test image'}]},
      {'cocoid': 7, 'split': 'restval', 'sentences': [{'raw': 'rest'}]},
      {'cocoid': 6, 'split': 'train', 'sentences': [{'tokens': ['no', 'raw']}]},
      {'filename': '1000092795.jpg', 'split': 'train', 'sentences': [{'raw': 'flickr'}]}]}
  path = fx.write_json(tmp_path / 'karpathy.json', karpathy)
  report = new_report()
  captions, embedded = _load(path, report, VinvlOptions(), karpathy_splits=['train', 'restval'])
  assert captions == {'9': ['A dog.', 'a cat'], '7': ['rest'], '1000092795': ['flickr']}
  assert embedded == {}
  assert dict(report.problems) == {'bad_caption': 1}
  assert report.messages[0].startswith(f'{path}: images[3]: bad_caption')
  assert report.stats['caption_images'] == 4 and report.stats['captions'] == 4

  entries = fx.caption_list({'3': ['a', 'b'], '4': ['c']})
  entries[0]['phrases'] = [['dog'], ['dog', 'brown']]
  entries.append({'image_id': 5})
  path = fx.write_json(tmp_path / 'list.json', {'annotations': entries})
  report = new_report()
  captions, embedded = _load(path, report, VinvlOptions())
  assert captions == {'3': ['a', 'b'], '4': ['c']}
  assert embedded == {('3', 0): [('dog',), ('dog', 'brown')]}
  assert dict(report.problems) == {'bad_caption': 1}

  path = fx.write_json(tmp_path / 'dict.json', {'img_1': ['x'], '2': json.dumps(['y', 'z'])})
  report = new_report()
  captions, _ = _load(path, report, VinvlOptions(normalize_ids=True))
  assert captions == {'1': ['x'], '2': ['y', 'z']}


def _write_import_inputs(tmp_path, corrupt_ids=()):
  """features.tsv (2048-d), predictions.tsv, Karpathy captions and a SPICE phrase file."""
  ids = ['101', '102', '103', '104']
  images = _images(ids, seed=4)
  feature_lines = [fx.feature_line(i, images[i].roi) if i not in corrupt_ids
                   else f'{i}\t2\tnot-base64!' for i in reversed(ids)]
  features = fx.write_tsv(tmp_path / 'features.tsv', feature_lines)
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv',
                             [fx.prediction_line(images[i]) for i in ids])
  karpathy = {'images': [{'cocoid': int(i), 'split': 'train',
                          'sentences': [{'raw': f'first {i}'}, {'raw': f'second {i}'}]}
                         for i in ids] + [{'cocoid': 999, 'split': 'test',
                                           'sentences': [{'raw': 'unused'}]}]}
  captions = fx.write_json(tmp_path / 'captions.json', karpathy)
  spice = [{'image_id': f'{i}_{k}', 'test_tuples': [{'tuple': ['dog']}] * (k + 1)}
           for i in ids for k in range(2)]
  phrases = fx.write_json(tmp_path / 'spice.json', spice)
  return images, dict(features=features, predictions=predictions, captions=captions,
                      phrases=phrases)


def test_import_writes_a_split_that_reads_back(tmp_path):
  images, inputs = _write_import_inputs(tmp_path, corrupt_ids=['103'])
  out_dir = str(tmp_path / 'out')
  report = import_vinvl.import_vinvl(**inputs, out_dir=out_dir, split='train',
                                     max_error_fraction=0.25)
  assert dict(report.problems) == {'bad_base64': 1}
  assert report.stats['caption_images'] == 4 and report.stats['records'] == 3
  with open(os.path.join(out_dir, 'train_import_report.json')) as f:
    saved = json.load(f)
  assert saved['status'] == 'complete' and saved['problems'] == {'bad_base64': 1}
  assert saved['messages'][0].startswith(f"{inputs['features']}:2: bad_base64")
  records = list(storage.read_dataset(out_dir, 'train').as_numpy_iterator())
  assert [r['image_id'].decode() for r in records] == ['104', '102', '101']
  for record in records:
    image = images[record['image_id'].decode()]
    assert record['region_features'][:, :2048].tobytes() == image.roi.tobytes()
    np.testing.assert_allclose(record['region_features'][:, 2048:], image.box6(), rtol=1e-6)
    assert [c.decode() for c in record['captions']] == [f'first {image.image_id}',
                                                        f'second {image.image_id}']
    phrases = [[list(p) for p in caption] for caption in record['phrases']]
    assert phrases == [[[b'dog']], [[b'dog'], [b'dog']]]
  assert storage.read_metadata(out_dir)['region_feature_dim'] == 2054


def _assert_no_split(out_dir, split='train'):
  assert not os.path.exists(os.path.join(out_dir, split))
  leftovers = [n for n in os.listdir(out_dir) if n.startswith(f'.{split}.')]
  assert not leftovers
  assert not os.path.exists(import_vinvl.report_path(out_dir, split))
  with open(import_vinvl.report_path(out_dir, split, failed=True)) as f:
    return json.load(f)


def test_too_many_bad_images_leave_no_split(tmp_path):
  _, inputs = _write_import_inputs(tmp_path, corrupt_ids=['102'])
  out_dir = str(tmp_path / 'out')
  with pytest.raises(VinvlImportError, match='25.00% of the captioned images were left out'):
    import_vinvl.import_vinvl(**inputs, out_dir=out_dir, split='train')
  saved = _assert_no_split(out_dir)
  assert saved['status'] == 'failed' and saved['problems'] == {'bad_base64': 1}


def test_cli_success_and_raise_policy(tmp_path, capsys):
  _, inputs = _write_import_inputs(tmp_path, corrupt_ids=['101'])  # the last features row
  flags = [f'--{k}={v}' for k, v in inputs.items()] + [f'--out_dir={tmp_path / "out"}']
  assert import_vinvl.main(flags + ['--split=train', '--on_error=raise']) == 1
  assert 'features.tsv:4: bad_base64' in capsys.readouterr().err
  _assert_no_split(str(tmp_path / 'out'))  # three records were written before the failure
  assert import_vinvl.main(flags + ['--split=train', '--max_error_fraction=0.3']) == 0
  assert '3 records from 4 caption_images (25.00% left out)' in capsys.readouterr().out
  assert not os.path.exists(import_vinvl.report_path(str(tmp_path / 'out'), 'train', True))
  assert import_vinvl.main(flags + ['--split=train']) == 1  # exists, no --overwrite
  assert 'already written' in capsys.readouterr().err


def test_extract_file_import_with_builtin_phrases(tmp_path):
  image = fx.make_image(_rng(5), 'photo', num_boxes=2)
  features = fx.write_tsv(tmp_path / 'predictions.tsv', [fx.extract_line(image)])
  captions = fx.write_json(tmp_path / 'c.json', [
      {'image_id': 'photo', 'caption': 'brown dog runs', 'phrases': [['dog', 'brown']]},
      {'image_id': 'photo', 'caption': 'a dog'}])
  out_dir = str(tmp_path / 'out')
  report = import_vinvl.import_vinvl(features=features, captions=captions, out_dir=out_dir,
                                     split='val', builtin_phrases=True)
  assert not report.problems and report.stats['records'] == 1
  record = next(storage.read_dataset(out_dir, 'val').as_numpy_iterator())
  assert record['region_features'].tobytes() == image.features().tobytes()
  # Given phrases are kept; the caption without them gets the built-in extractor's tuples.
  assert [[list(p) for p in c] for c in record['phrases']] == [[[b'dog', b'brown']],
                                                               [[b'dog']]]
  with pytest.raises(VinvlImportError, match='predictions are not used'):
    import_vinvl.import_vinvl(features=features, captions=captions, out_dir=out_dir,
                              split='test', predictions=features)

