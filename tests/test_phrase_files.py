"""Tests of input_pipeline/phrase_files.py on hand-written samples of every format."""

import json
import pickle
import sys

import pytest

from input_pipeline import phrase_files
from input_pipeline.phrase_files import PhraseFileError

SPICE = [
    {'image_id': '391895_0', 'test_tuples': [
        {'tuple': ['man'], 'truth_value': False},
        {'tuple': ['man', 'young']},
        {'tuple': ['man', 'ride', 'motorcycle']}], 'ref_tuples': [], 'scores': {}},
    {'image_id': '391895_1', 'test_tuples': []},
    {'image_id': 'COCO_val2014_7_12', 'test_tuples': [{'tuple': ['sunglass']}]},
]


def _write(tmp_path, name, obj):
  path = tmp_path / name
  if name.endswith('.json'):
    path.write_text(json.dumps(obj))
  else:
    path.write_bytes(pickle.dumps(obj))
  return str(path)


def test_spice_detailed_output(tmp_path):
  table = phrase_files.load_phrase_file(_write(tmp_path, 'spice.json', SPICE))
  assert table == {
      ('391895', 0): [('man',), ('man', 'young'), ('man', 'ride', 'motorcycle')],
      ('391895', 1): [],
      ('COCO_val2014_7', 12): [('sunglass',)],
  }


def test_coco_joined_strings_and_flickr_lists_agree(tmp_path):
  coco = {391895: [['man', 'man_young', 'man_fill with_cup'], []], 7: [['dog']]}
  flickr = {'391895': [[['man'], ['man', 'young'], ['man', 'fill with', 'cup']], []],
            '7': [[['dog']]]}
  expected = {('391895', 0): [('man',), ('man', 'young'), ('man', 'fill with', 'cup')],
              ('391895', 1): [], ('7', 0): [('dog',)]}
  assert phrase_files.load_phrase_file(_write(tmp_path, 'coco_full_sg.pkl', coco)) == expected
  assert phrase_files.load_phrase_file(_write(tmp_path, 'fk_sg.json', flickr)) == expected
  assert phrase_files.load_phrase_file(_write(tmp_path, 'c.pkl', coco), 'coco') == expected


def test_ve_and_re_files(tmp_path):
  ve = [[[['man'], ['man', 'sit on', 'bench']], '3416050480.jpg#4r1n'],
        [[], '3416050480.jpg#4r1e']]
  table = phrase_files.load_phrase_file(_write(tmp_path, 'train_sgs.json', ve))
  assert table == {('3416050480.jpg#4r1n', 0): [('man',), ('man', 'sit on', 'bench')],
                   ('3416050480.jpg#4r1e', 0): []}
  re_file = [{'image_id': 'refcoco_12_3', 'test_tuples': [{'tuple': ['left', 'zebra']}]}]
  table = phrase_files.load_phrase_file(_write(tmp_path, 're_sg_val.json', re_file), 're')
  assert table == {('refcoco_12_3', 0): [('left', 'zebra')]}


def test_pt_file_is_read_with_torch(tmp_path):
  torch = pytest.importorskip('torch')
  path = str(tmp_path / 'coco_full_sg.pt')
  torch.save({5: [['dog_brown']]}, path)
  assert phrase_files.load_phrase_file(path, 'coco') == {('5', 0): [('dog', 'brown')]}


def test_pt_file_without_torch_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  path = tmp_path / 'coco_full_sg.pt'
  path.write_bytes(b'')
  with pytest.raises(PhraseFileError, match='coco_full_sg.pt: reading a .pt file needs torch'):
    phrase_files.load_phrase_file(str(path))


@pytest.mark.parametrize('name, data, fmt, message', [
    ('s.json', [{'image_id': '5', 'test_tuples': []}], 'spice',
     r"entry 0 \(image_id '5'\): image_id must look like"),
    ('s.json', [{'image_id': '5_0', 'test_tuples': [{'tuple': ['a', 'b', 'c', 'd']}]}], 'spice',
     r"entry 0 \(image_id '5_0'\), phrase 0: a phrase has 1 to 3 items"),
    ('s.json', [{'image_id': '5_0'}], 'spice', r'entry 0: expected a dict with "image_id"'),
    ('s.json', [{'image_id': '5_0', 'test_tuples': []}] * 2, 'spice',
     r"entry 1 \(image_id '5_0'\): duplicate entry for image '5' caption 0"),
    ('c.json', {'9': [['dog', 3]]}, 'coco', r"image '9', caption 0, phrase 1: expected a"),
    ('c.json', {'9': [['dog__x']]}, 'coco', r"image '9', caption 0, phrase 0: phrase items"),
    ('f.json', {'9': [[['dog'], 'cat']]}, 'flickr',
     r"image '9', caption 0, phrase 1: a phrase must be a list of strings"),
    ('f.json', {'9': 'dog'}, 'flickr', r"image '9': expected one phrase list per caption"),
    ('v.json', [[[['dog']], 'p1', 'extra']], 've', r'entry 0: expected \[tuples, pairID\]'),
    ('v.json', {'a': 1}, 've', r'expected a list of \[tuples, pairID\]'),
    ('x.json', [], 'auto', r'cannot tell the phrase format'),
])
def test_malformed_entries_name_file_and_entry(tmp_path, name, data, fmt, message):
  path = _write(tmp_path, name, data)
  with pytest.raises(PhraseFileError, match=message) as error:
    phrase_files.load_phrase_file(path, fmt)
  assert str(error.value).startswith(path)


def test_invalid_json_and_unknown_format(tmp_path):
  path = tmp_path / 'bad.json'
  path.write_text('[{"image_id": ')
  with pytest.raises(PhraseFileError, match='bad.json: not valid JSON'):
    phrase_files.load_phrase_file(str(path))
  with pytest.raises(ValueError, match='unknown phrase format'):
    phrase_files.load_phrase_file(str(path), 'vqa')
