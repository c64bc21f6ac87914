"""VinVL import: phrases stay with their caption; the published formats (issue 10 items 8, 11, 12).

Every input is written here in the real format of the authors', COCO's, SPICE's, Oscar's or
scene_graph_benchmark's files (tools/split_json.py numbers SPICE ids "{id}_{k}" over every entry
of an image; run_retrieval.py reads `{split}_captions.pt` and `{split}_img_frcnn_feats.pt`).
"""

import json

import numpy as np
import pytest
import torch

from input_pipeline import captions as captions_lib
from input_pipeline import import_vinvl
from input_pipeline import storage
from input_pipeline.vinvl_rows import VinvlImportError, VinvlOptions, new_report
import vinvl_fixtures as fx

OPTIONS = VinvlOptions()


def _phrases_of(caption_set, table, path='sg.json'):
  """{caption: phrases} of every kept caption, through the importer's own lookup."""
  report = new_report()
  if table is not None:
    import_vinvl.align_phrase_table(caption_set, table, path, report)
  phrases_for = import_vinvl.make_phrases_for(caption_set, table, path, None, report)
  return {c: phrases_for(i, k, c) for i, cs in caption_set.captions.items()
          for k, c in enumerate(cs)}, report


def _spice(entries):
  return [{'image_id': key, 'test_tuples': [{'tuple': list(t)} for t in tuples]}
          for key, tuples in entries]


def test_a_dropped_empty_caption_does_not_shift_the_spice_phrases(tmp_path):
  # SPICE input made by split_json.py counts every entry of image 5, the empty one too.
  entries = [{'image_id': 5, 'caption': 'A pizza on a table.'},
             {'image_id': 5, 'caption': '  '},
             {'image_id': 5, 'caption': 'People walking down the street.'},
             {'image_id': 5, 'caption': 'A man riding a horse.'}]
  captions = fx.write_json(tmp_path / 'captions.json', entries)
  spice = fx.write_json(tmp_path / 'spice.json', _spice([
      ('5_0', [('pizza',), ('table',)]), ('5_1', [('nothing',)]),
      ('5_2', [('people',), ('street',)]), ('5_3', [('man', 'ride', 'horse')])]))
  report = new_report()
  caption_set = captions_lib.load_captions(captions, report, OPTIONS)
  table = import_vinvl.load_phrase_table(spice, 'auto', report, OPTIONS)
  phrases, _ = _phrases_of(caption_set, table, spice)
  assert phrases == {'A pizza on a table.': [('pizza',), ('table',)],
                     'People walking down the street.': [('people',), ('street',)],
                     'A man riding a horse.': [('man', 'ride', 'horse')]}
  assert dict(report.problems) == {'bad_caption': 1}


def test_a_phrase_file_with_more_lists_than_captions_leaves_the_image_out(tmp_path):
  captions = fx.write_json(tmp_path / 'captions.json',
                           {'7': [f'caption {k}' for k in range(5)], '8': ['a dog', 'a cat']})
  # coco_full_sg.pt layout: {image_id: ['_'-joined tuples of each caption]}, 6 lists for 5.
  sg = fx.write_json(tmp_path / 'coco_sg.json',
                     {'7': [['dog'] for _ in range(6)], '8': [['dog'], ['cat']]})
  report = new_report()
  caption_set = captions_lib.load_captions(captions, report, OPTIONS)
  table = import_vinvl.load_phrase_table(sg, 'coco', report, OPTIONS)
  phrases, align_report = _phrases_of(caption_set, table, sg)
  assert phrases == {'a dog': [('dog',)], 'a cat': [('cat',)]}
  assert dict(align_report.problems) == {'phrase_count_mismatch': 1}
  assert "image '7'" in align_report.messages[0] and '5 caption entries' in align_report.messages[0]


def test_a_repeated_key_in_a_caption_file_is_refused(tmp_path):
  path = tmp_path / 'captions.json'
  path.write_text('{"7": ["a", "b", "c", "d", "e"], "8": ["x"], "7": ["only one"]}')
  with pytest.raises(VinvlImportError,
                     match=r"captions\.json: captions: repeated key\(s\) \['7'\]"):
    captions_lib.load_captions(str(path), new_report(), OPTIONS)


def test_reordered_captions_keep_their_phrases_with_a_processed_file(tmp_path):
  # tools/phrase_parse.sh -> processed_*.json names each caption by its text.
  processed = fx.write_json(tmp_path / 'processed_captions.json', [
      {'image_id': '3', 'text': 'A dog on grass.', 'phrases': [['dog'], ['grass']]},
      {'image_id': '3', 'text': 'A red ball.', 'phrases': [['ball', 'red']]}])
  captions = fx.write_json(tmp_path / 'captions.json', [  # re-ordered after parsing
      {'image_id': '3', 'text': 'A red ball.'}, {'image_id': '3', 'text': 'a dog on  grass.'}])
  report = new_report()
  caption_set = captions_lib.load_captions(captions, report, OPTIONS)
  table = import_vinvl.load_phrase_table(processed, 'auto', report, OPTIONS)
  phrases, _ = _phrases_of(caption_set, table, processed)
  assert phrases == {'A red ball.': [('ball', 'red')], 'a dog on  grass.': [('dog',), ('grass',)]}


def test_a_phrase_file_matching_no_captioned_image_fails(tmp_path):
  captions = fx.write_json(tmp_path / 'captions.json', {'7': ['a dog']})
  spice = fx.write_json(tmp_path / 'spice.json', _spice([('COCO_val2014_7_0', [('dog',)])]))
  caption_set = captions_lib.load_captions(captions, new_report(), OPTIONS)
  table = import_vinvl.load_phrase_table(spice, 'auto', new_report(), OPTIONS)
  with pytest.raises(VinvlImportError, match='no phrase entry matches a captioned image'):
    _phrases_of(caption_set, table, spice)


def test_coco_official_captions_with_images_and_annotations(tmp_path):
  coco = {'info': {}, 'licenses': [],
          'images': [{'id': 9, 'file_name': 'COCO_train2014_000000000009.jpg',
                      'height': 480, 'width': 640}],
          'annotations': [{'image_id': 9, 'id': 1, 'caption': 'A plate of food. '},
                          {'image_id': 9, 'id': 2, 'caption': 'Food on a plate.'}]}
  path = fx.write_json(tmp_path / 'captions_train2014.json', coco)
  report = new_report()
  caption_set = captions_lib.load_captions(path, report, OPTIONS,
                                           karpathy_splits=['train', 'restval'])
  assert caption_set.fmt == 'coco'
  assert caption_set.captions == {'9': ['A plate of food.', 'Food on a plate.']}
  assert report.stats['caption_images_other_splits'] == 0


def test_oscar_captions_pt_and_text_lists(tmp_path):
  # run_retrieval.py: torch.load -> {int image id: json string of the caption list}.
  pt = tmp_path / 'train_captions.pt'
  torch.save({391895: json.dumps(['A man with a red helmet.', 'A biker.']), 522418: ['Cake.']},
             str(pt))
  caption_set = captions_lib.load_captions(str(pt), new_report(), OPTIONS)
  assert caption_set.captions == {'391895': ['A man with a red helmet.', 'A biker.'],
                                  '522418': ['Cake.']}
  texts = fx.write_json(tmp_path / 'custom.json', [{'text': 'A child.', 'image_id': 'test_img',
                                                     'label': 1}])
  report = new_report()
  assert captions_lib.load_captions(texts, report, OPTIONS).captions == {'test_img': ['A child.']}
  assert not report.problems
  weird = fx.write_json(tmp_path / 'weird.json', {'images': [{'id': 1, 'file_name': 'x.jpg'}]})
  with pytest.raises(VinvlImportError, match='no "sentences".*neither Karpathy'):
    captions_lib.load_captions(weird, new_report(), OPTIONS)


def _sgb_line(image):
  """A scene_graph_benchmark predictions.tsv row with per-object 2048-d features."""
  data = fx.prediction_json(image)
  for obj, roi in zip(data['objects'], image.roi):
    obj['feature'] = fx.encode(roi)
  return f'{image.image_id}\t{json.dumps(data)}'


def test_scene_graph_benchmark_predictions_with_features_import(tmp_path):
  rng = np.random.default_rng(0)
  images = [fx.make_image(rng, str(i), 3) for i in (1, 2)]
  features = fx.write_tsv(tmp_path / 'predictions.tsv', [_sgb_line(im) for im in images])
  captions = fx.write_json(tmp_path / 'captions.json', {'1': ['a dog'], '2': ['a car']})
  out = str(tmp_path / 'out')
  report = import_vinvl.import_vinvl(features=features, captions=captions, out_dir=out,
                                     split='train')
  assert report.stats['records'] == 2
  records = list(storage.read_dataset(out, 'train').as_numpy_iterator())
  np.testing.assert_array_equal(records[0]['region_features'][:, :2048], images[0].roi)
  np.testing.assert_allclose(records[0]['region_features'][:, 2048:], images[0].box6(),
                             rtol=1e-6)
  plain = fx.write_tsv(tmp_path / 'plain_predictions.tsv', [fx.prediction_line(images[0])])
  with pytest.raises(VinvlImportError, match='expected img_feat_extract.py\'s {"feature", '
                     '"predictions"} or scene_graph_benchmark objects'):
    import_vinvl.import_vinvl(features=plain, captions=captions, out_dir=str(tmp_path / 'o2'),
                              split='train')


def test_flickr_frcnn_feats_pt_import(tmp_path):
  rng = np.random.default_rng(1)
  images = [fx.make_image(rng, str(i), 2) for i in (10, 11)]
  feats = tmp_path / 'train_img_frcnn_feats.pt'
  torch.save({int(im.image_id): torch.from_numpy(im.features()) for im in images}, str(feats))
  labels = tmp_path / 'train_vinvl_labels.pt'
  torch.save({10: [{'class': 'dog'}, {'class': 'man'}], 11: 'car hat'}, str(labels))
  captions = fx.write_json(tmp_path / 'captions.json', {'10': ['a dog'], '11': ['a car']})
  out = str(tmp_path / 'out')
  report = import_vinvl.import_vinvl(features=str(feats), predictions=str(labels),
                                     captions=captions, out_dir=out, split='train')
  assert report.stats['records'] == 2
  records = {r['image_id'].decode(): r for r in storage.read_dataset(out, 'train')
             .as_numpy_iterator()}
  assert [t.decode() for t in records['10']['tags']] == ['dog', 'man']
  assert [t.decode() for t in records['11']['tags']] == ['car', 'hat']
  np.testing.assert_array_equal(records['11']['region_features'], images[1].features())


def test_an_absurd_finite_feature_is_refused_naming_the_row(tmp_path):
  rng = np.random.default_rng(2)
  images = {i: fx.make_image(rng, i, 2) for i in ('1', '2')}
  roi = images['2'].roi.copy()
  roi[1, 5] = 3e38
  features = fx.write_tsv(tmp_path / 'features.tsv', [fx.feature_line('1', images['1'].roi),
                                                       fx.feature_line('2', roi)])
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv',
                             [fx.prediction_line(images[i]) for i in ('1', '2')])
  captions = fx.write_json(tmp_path / 'captions.json', {'1': ['a'], '2': ['b']})
  with pytest.raises(VinvlImportError, match=r'features\.tsv:2: absurd_value: \|value\| up to '
                     r'3e\+38 .* in boxes \[1\]'):
    import_vinvl.import_vinvl(features=features, predictions=predictions, captions=captions,
                              out_dir=str(tmp_path / 'out'), split='train', on_error='raise')
  record = {'image_id': 'x', 'image_png': b'', 'image_size': np.array([1, 1], np.int32),
            'region_features': np.full((1, 8), 3e38, np.float32),
            'boxes': np.zeros((1, 4), np.float32), 'tags': ['a'], 'captions': ['a'],
            'phrases': [[]], 'phrase_regions': [[]]}
  with pytest.raises(ValueError, match=r"image_id 'x'.*\|value\| 3e\+38"):
    storage.validate_record(record, 0)


def test_a_duplicate_features_row_hidden_by_the_index_is_reported(tmp_path):
  rng = np.random.default_rng(3)
  images = {i: fx.make_image(rng, i, 2) for i in ('1', '2')}
  other = fx.make_image(rng, '2', 2)
  lines = [fx.feature_line('1', images['1'].roi), fx.feature_line('2', images['2'].roi),
           fx.feature_line('2', other.roi)]
  features = fx.write_tsv(tmp_path / 'features.tsv', lines, lineidx=True, index_ids=['1', '2'])
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv',
                             [fx.prediction_line(images[i]) for i in ('1', '2')])
  captions = fx.write_json(tmp_path / 'captions.json', {'1': ['a'], '2': ['b']})
  report = import_vinvl.import_vinvl(features=features, predictions=predictions,
                                     captions=captions, out_dir=str(tmp_path / 'out'),
                                     split='train', max_error_fraction=1.0)
  assert report.warnings['index_incomplete'] == 1
  assert report.problems['duplicate_id'] == 1
  assert any('features.tsv:3: duplicate_id' in m for m in report.messages)
