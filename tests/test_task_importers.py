"""Tests of the VQA, SNLI-VE and RefCOCO importers on small files in the public formats."""

import json
import os
import pickle

import numpy as np
import pytest

from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators
from input_pipeline.tasks import refcoco
from input_pipeline.tasks import snli_ve
from input_pipeline.tasks import vqa
import task_fixtures

@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """An image-record dataset keyed like a VinVL COCO import (ids normalise to 42 and 7)."""
  directory = str(tmp_path_factory.mktemp('coco'))
  task_fixtures.write_coco_images(directory)
  return [(directory, 'train')]


def _write(path, value):
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f)
  return str(path)


def _vqa_v2_files(tmp_path):
  questions = _write(tmp_path / 'v2_OpenEnded_mscoco_train2014_questions.json', {'questions': [
      {'question_id': 420, 'image_id': 42, 'question': 'What color is the dog?'},
      {'question_id': 70, 'image_id': 7, 'question': 'Is it a dog?'},
      {'question_id': 990, 'image_id': 999, 'question': 'Is it there?'},
  ]})
  answers_420 = ['red'] * 5 + ['Red '] + ['brown'] * 2 + ['black', 'yes']
  annotations = _write(tmp_path / 'v2_mscoco_train2014_annotations.json', {'annotations': [
      {'question_id': 420, 'multiple_choice_answer': 'red',
       'answers': [{'answer': a, 'answer_id': i + 1} for i, a in enumerate(answers_420)]},
      {'question_id': 70, 'multiple_choice_answer': 'yes',
       'answers': [{'answer': 'yes'}] * 9 + [{'answer': 'no'}]},
      {'question_id': 990, 'multiple_choice_answer': 'no', 'answers': [{'answer': 'no'}] * 10},
  ]})
  return questions, annotations


def test_vqa_v2_soft_scores_answer_vocab_and_missing_images(tmp_path, images):
  questions, annotations = _vqa_v2_files(tmp_path)
  with open(tmp_path / 'trainval_ans2label.pkl', 'wb') as f:
    pickle.dump({'yes': 0, 'no': 1, 'red': 2, 'brown': 3}, f)
  out = str(tmp_path / 'vqa')
  info = vqa.import_vqa(out_dir=out, split='train', image_sources=images, questions=questions,
                        annotations=annotations,
                        answer_vocab=str(tmp_path / 'trainval_ans2label.pkl'),
                        max_error_fraction=0.5)
  assert info.task == 'vqa' and info.answers == ['yes', 'no', 'red', 'brown']
  _, stored = examples_lib.read_examples(out, 'train')
  # Question 420: 'red' x6 (after normalisation) -> 1, 'brown' x2 -> 2/3, 'yes' x1 -> 1/3;
  # 'black' is not in the vocabulary.
  assert [(e['question_id'], e['image_id'], e['labels']) for e in stored] == [
      (420, '42', [0, 2, 3]), (70, '7', [0, 1])]
  np.testing.assert_allclose(stored[0]['scores'], [1 / 3, 1.0, 2 / 3])
  np.testing.assert_allclose(stored[1]['scores'], [1.0, 1 / 3])
  assert ('dog',) in {tuple(p) for p in stored[0]['phrases']}  # built-in extractor
  with open(os.path.join(out, 'train_import_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  assert report['problems'] == {'missing_image': 1}
  assert any('questions[2]' in m and "'999'" in m for m in report['messages'])
  assert examples_lib.load_task_info(out).splits['train']['num_images'] == 2
  # With the default 1% tolerance the lost question fails the import, and nothing is written.
  with pytest.raises(examples_lib.TaskDataError, match='33.33% of 3 examples'):
    vqa.import_vqa(out_dir=str(tmp_path / 'strict'), split='train', image_sources=images,
                   questions=questions, annotations=annotations, min_answer_count=1)
  with pytest.raises(FileNotFoundError, match='not a task dataset'):
    examples_lib.read_examples(str(tmp_path / 'strict'), 'train')


def test_vqa_vocab_built_from_train_answers_and_qla_form(tmp_path, images):
  questions, annotations = _vqa_v2_files(tmp_path)
  out = str(tmp_path / 'vqa')
  info = vqa.import_vqa(out_dir=out, split='train', image_sources=images, questions=questions,
                        annotations=annotations, min_answer_count=1, max_error_fraction=0.5,
                        builtin_phrases=False)
  assert info.answers == ['no', 'red', 'yes']  # best answers, each of one question
  qla = _write(tmp_path / 'val2014_qla_mrcnn.json', [
      {'q': 'what is red?', 'o': 'dog', 'img_id': 'COCO_val2014_000000000042', 'q_id': 5,
       'an': [1, 2], 's': [1.0, 0.3], 'answer_type': 'other'},
      {'question': 'a dog?', 'image_id': 7, 'question_id': 6, 'labels': ['yes'],
       'scores': [0.9], 'answer_type': 'yes/no'},
  ])
  info = vqa.import_vqa(out_dir=out, split='val', image_sources=images, qla=qla,
                        builtin_phrases=False)
  _, stored = examples_lib.read_examples(out, 'val')
  assert [(e['question_id'], e['image_id'], e['labels'], e['scores'], e['phrases'])
          for e in stored] == [(5, '42', [1, 2], [1.0, 0.3], []), (6, '7', [2], [0.9], [])]
  bad = _write(tmp_path / 'bad_qla.json', [{'q': 'x?', 'img_id': 7, 'q_id': 1, 'an': [3],
                                            's': [1.0]}])
  with pytest.raises(examples_lib.TaskDataError, match=r'bad_qla.json: \[0\]: bad_label'):
    vqa.import_vqa(out_dir=out, split='bad', image_sources=images, qla=bad, on_error='raise')


def test_snli_ve_label_mapping_and_reports(tmp_path, images):
  lines = [
      {'sentence2': 'A dog is red.', 'gold_label': 'entailment', 'Flickr30K_ID': '42',
       'pairID': '42r1e'},
      {'sentence2': 'A dog sleeps.', 'gold_label': 'neutral', 'Flickr30K_ID': '7',
       'pairID': '7r1n'},
      {'sentence2': 'A cat.', 'gold_label': 'contradiction', 'Flickr30K_ID': '42',
       'pairID': '42r1c'},
      {'sentence2': 'Unclear.', 'gold_label': '-', 'Flickr30K_ID': '42', 'pairID': 'x'},
      {'sentence2': 'Elsewhere.', 'gold_label': 'neutral', 'Flickr30K_ID': '5', 'pairID': 'y'},
  ]
  path = tmp_path / 'snli_ve_dev.jsonl'
  path.write_text(''.join(json.dumps(l) + '\n' for l in lines))
  sgs = _write(tmp_path / 'dev_sgs.json', [[[['dog', 'red']], '42r1e']])
  out = str(tmp_path / 've')
  info = snli_ve.import_snli_ve(jsonl=str(path), out_dir=out, split='dev', image_sources=images,
                                phrases=sgs, max_error_fraction=0.5)
  assert info.label_names == ('contradiction', 'neutral', 'entailment')
  _, stored = examples_lib.read_examples(out, 'dev')
  assert [(e['example_id'], e['image_id'], e['label']) for e in stored] == [
      ('42r1e', '42', 2), ('7r1n', '7', 1), ('42r1c', '42', 0)]
  assert stored[0]['phrases'] == [['dog', 'red']] and ['dog'] in stored[1]['phrases']
  with open(os.path.join(out, 'dev_import_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  assert report['problems'] == {'bad_label': 1, 'missing_image': 1}
  assert any('snli_ve_dev.jsonl:4' in m for m in report['messages'])
  assert any('snli_ve_dev.jsonl:5' in m and 'missing_image' in m for m in report['messages'])


def test_refcoco_boxes_iou_and_missing_images(tmp_path, images):
  refs = [
      {'ref_id': 1, 'image_id': 42, 'ann_id': 500, 'split': 'testA',
       'sentences': [{'sent': 'left dog', 'sent_id': 11}, {'sent': 'the dog', 'sent_id': 12}]},
      {'ref_id': 2, 'image_id': 42, 'ann_id': 501, 'split': 'train',
       'sentences': [{'sent': 'other split'}]},
      {'ref_id': 3, 'image_id': 77, 'ann_id': 500, 'split': 'testA',
       'sentences': [{'sent': 'no image'}]},
  ]
  with open(tmp_path / 'refs(unc).p', 'wb') as f:
    pickle.dump(refs, f)
  instances = _write(tmp_path / 'instances.json', {'annotations': [
      {'id': 500, 'image_id': 42, 'bbox': [10, 20, 30, 40]},
      {'id': 501, 'image_id': 42, 'bbox': [0, 0, 5, 5]}]})
  out = str(tmp_path / 're')
  refcoco.import_refcoco(refs=str(tmp_path / 'refs(unc).p'), instances=instances,
                         ref_split='testA', out_dir=out, split='testA', image_sources=images,
                         max_error_fraction=0.5)
  _, stored = examples_lib.read_examples(out, 'testA')
  assert [(e['example_id'], e['text'], e['target_box'], e['phrases']) for e in stored] == [
      ('1_11', 'left dog', [10, 20, 40, 60], []), ('1_12', 'the dog', [10, 20, 40, 60], [])]
  # IoU with the region boxes of image 42: itself, 200 / 1800, 300 / 2100.
  iou = task_iterators.box_iou(task_fixtures.BOXES_42,
                               np.float32(stored[0]['target_box'])).numpy()
  np.testing.assert_allclose(iou, [1.0, 1 / 9, 1 / 7], rtol=1e-6)
  assert task_iterators.box_iou(np.float32([[40, 60, 50, 70]]),
                                np.float32([10, 20, 40, 60])).numpy()[0] == 0.0  # touching
  with open(os.path.join(out, 'testA_import_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  assert report['problems'] == {'missing_image': 1}
  assert any('refs[2] sentences[0]' in m and "'77'" in m for m in report['messages'])
  assert refcoco.xywh_to_xyxy([1, 2, 3, 4]) == [1, 2, 4, 6]
