"""Tests of input_pipeline.tasks (examples, iterators, shapesworld_tasks): storage and batches."""

import json
import os

import numpy as np
import pytest

from input_pipeline import concepts
from input_pipeline import ops
from input_pipeline import storage
from input_pipeline import train_vocab
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing
from input_pipeline.tasks import iterators as task_iterators

WORDS = ['a', 'dog', 'man', 'red', 'ball', 'on', 'grass', 'what', 'is', 'tree', 'the', 'big']
LENGTHS = task_iterators.Lengths(max_seq_length=8, max_phrases=2, max_tag_length=5,
                                 max_img_seq_length=3)
TAGS = ['dog', 'tree', 'dog', 'man', 'ball']
D = 10
# The op strings and batch keys of each task's layout (what the trainer's task registry passes).
PIPELINES = {'retrieval': (ops.PRESETS['retrieval'], ()),
             'vqa': (ops.PRESETS['vqa'], ('answer_targets', 'question_id')),
             've': (ops.PRESETS['ve'], ('label',)),
             're': (ops.PRESETS['re'], ('region_iou', 'target_box'))}
SPLIT_SIZES = {'retrieval': 4, 'vqa': 13, 've': 12, 're': 12}  # Examples per task split.


def _records(num_images=4):
  rng = np.random.default_rng(0)
  for i in range(num_images):
    n = 2 + i % 3  # 2, 3, 4, 2 regions: one image has more than R = 3.
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 40, 40]],
                     np.float32)[:n]
    yield {
        'image_id': f'img{i}', 'image_png': b'', 'image_size': np.array([40, 40], np.int32),
        'region_features': rng.random((n, D), dtype=np.float32), 'boxes': boxes,
        'tags': TAGS[:n] if i != 2 else TAGS[:4], 'captions': [f'a dog on grass {i}'],
        'phrases': [[('dog',)]], 'phrase_regions': [[0]],
    }


def _examples(task, num_images=4, per_image=3):
  out = []
  for i in range(num_images):
    for k in range(per_image):
      e = {'example_id': f'{i}-{k}', 'image_id': f'img{i}', 'text': 'what is red a ball',
           'phrases': [['ball', 'red'], ['dog']]}
      if task == 'vqa':
        e.update(question_id=100 * i + k, labels=[2, 0], scores=[1.0, 0.3])
      elif task == 've':
        e['label'] = (i + k) % 3
      elif task == 're':
        e['target_box'] = [0.0, 0.0, 10.0, 20.0]
      out.append(e)
  return out


def _write_vocab(directory):
  train_vocab.write_vocab(WORDS, os.path.join(directory, 'words.txt'))
  storage.save_vocabularies(directory, os.path.join(directory, 'words.txt'), concepts.ConceptVocab(
      {WORDS.index('dog') + 5: ('dog',), 17: ('ball', 'red')}, word_vocab_size=17))
  os.remove(os.path.join(directory, 'words.txt'))


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  out = {}
  for task in examples_lib.TASKS:
    directory = str(tmp_path_factory.mktemp(task))
    _write_vocab(directory)
    if task == 'vqa':
      examples_lib.write_answers(directory, ['yes', 'no', 'red', 'two'])
    examples = (list(importing.retrieval_examples(_records())) if task == 'retrieval'
                else _examples(task))
    if task == 'vqa':  # A short question on the image with four tags.
      examples.append({'example_id': 'short', 'image_id': 'img2', 'text': 'is', 'phrases': [],
                       'question_id': 7, 'labels': [], 'scores': []})
    examples_lib.write_task_split(directory, 'train', task=task, records=_records(),
                                  examples=examples)
    out[task] = directory
  return out


@pytest.fixture(scope='module')
def epochs(datasets):
  """One batch holding the whole split, in stored order, per task."""
  return {task: next(iter(_iterator(directory, task, batch_size=SPLIT_SIZES[task])))
          for task, directory in datasets.items()}


def _iterator(directory, task, **kwargs):
  preprocess, keys = PIPELINES[task]
  settings = dict(lengths=LENGTHS, batch_size=4, seed=5, shuffle=False, repeat=False,
                  pad_final_batch=False, process_index=0, process_count=1,
                  preprocess=preprocess, batch_keys=keys)
  return task_iterators.create_task_iterator(directory, task, 'train', **{**settings, **kwargs})


@pytest.mark.parametrize('task', examples_lib.TASKS)
def test_batches_have_exactly_the_contract_keys_dtypes_and_shapes(epochs, task):
  batch = epochs[task]
  b = SPLIT_SIZES[task]
  la, t, r = LENGTHS.text_length, LENGTHS.max_tag_length, LENGTHS.max_img_seq_length
  expected = {
      'input_ids_a': ('int32', (b, la)), 'attention_mask_a': ('int32', (b, la)),
      'token_type_ids_a': ('int32', (b, la)), 'input_ids_b': ('int32', (b, t)),
      'token_type_ids_b': ('int32', (b, t)), 'attention_mask_b': ('int32', (b, t + r)),
      'img_feats': ('float32', (b, r, D)), 'phrase_index': ('int32', (b, 2)),
      'img_index': ('int32', (b, 2)), 'mlm_labels_a': ('int32', (b, la)),
      'mlm_labels_b': ('int32', (b, t)), 'phrase_region_links': ('int32', (b, la)),
      'image_index': ('int32', (b,)), 'example_index': ('int64', (b,)),
      'example_valid': ('int32', (b,)),
  }
  expected.update({
      'retrieval': {},
      'vqa': {'answer_targets': ('float32', (b, 4)), 'question_id': ('int64', (b,))},
      've': {'label': ('int32', (b,))},
      're': {'region_iou': ('float32', (b, r)), 'target_box': ('float32', (b, 4))},
  }[task])
  assert set(batch) == set(expected) == set(task_iterators.batch_keys(PIPELINES[task][1]))
  for key, (dtype, shape) in expected.items():
    assert (str(batch[key].dtype), batch[key].shape) == (dtype, shape), key
  assert (batch['mlm_labels_a'] == -1).all() and (batch['mlm_labels_b'] == -1).all()
  assert (batch['example_valid'] == 1).all()
  np.testing.assert_array_equal(batch['example_index'], np.arange(b))


def test_task_info_and_answers(datasets):
  info = task_iterators.load_task_info(datasets['vqa'])
  assert (info.task, info.num_answers, info.answers) == ('vqa', 4, ['yes', 'no', 'red', 'two'])
  assert info.splits['train']['num_examples'] == 13 and info.splits['train']['num_images'] == 4
  ve = task_iterators.load_task_info(datasets['ve'])
  assert ve.label_names == ('contradiction', 'neutral', 'entailment') and ve.num_labels == 3
  assert storage.read_metadata(datasets['re'])['task'] == 're'


def _ids(tokens):
  return [WORDS.index(w) + 5 if w in WORDS else {'[CLS]': 2, '[SEP]': 3}[w] for w in tokens]


def test_vqa_text_has_tags_after_sep_with_segment_1_truncated_to_la(epochs):
  batch = epochs['vqa']
  dog = WORDS.index('dog') + 5
  # [CLS] what is red a ball | (ball, red) (dog) | [SEP] = 9, one tag piece fits in La = 10.
  words = _ids(['[CLS]', 'what', 'is', 'red', 'a', 'ball'])
  np.testing.assert_array_equal(batch['input_ids_a'][0],
                                words + [17, dog] + _ids(['[SEP]', 'dog']))
  np.testing.assert_array_equal(batch['token_type_ids_a'][0], [0] * 9 + [1])
  np.testing.assert_array_equal(batch['attention_mask_a'][0], [1] * 10)
  np.testing.assert_array_equal(batch['phrase_index'][0], [6, 8])
  # The visual stream keeps the deduplicated tags with segment 1.
  np.testing.assert_array_equal(batch['input_ids_b'][0], _ids(['[CLS]', 'dog', 'tree', '[SEP]'])
                                + [0])
  np.testing.assert_array_equal(batch['answer_targets'][0],
                                np.float32([0.3, 0.0, 1.0, 0.0]))
  np.testing.assert_array_equal(batch['question_id'], [0, 1, 2, 100, 101, 102, 200, 201, 202,
                                                       300, 301, 302, 7])


def test_vqa_tags_fill_the_rest_of_text_a_when_the_question_is_short(epochs):
  batch = {k: v[12:] for k, v in epochs['vqa'].items()}
  # [CLS] is [SEP] then all four tags in region order with duplicates (La = 10 leaves room).
  tags = _ids(['dog', 'tree', 'dog', 'man'])
  np.testing.assert_array_equal(batch['input_ids_a'][0],
                                _ids(['[CLS]', 'is', '[SEP]']) + tags + [0, 0, 0])
  np.testing.assert_array_equal(batch['token_type_ids_a'][0], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(batch['attention_mask_a'][0], [1] * 7 + [0] * 3)
  assert (batch['answer_targets'] == 0).all()


def test_re_has_no_phrases_and_exact_region_iou(epochs):
  batch = epochs['re']
  n = 5  # what is red a ball
  np.testing.assert_array_equal(batch['phrase_index'], [[1 + n, 1 + n]] * 12)
  np.testing.assert_array_equal(batch['input_ids_a'][0],
                                _ids(['[CLS]', 'what', 'is', 'red', 'a', 'ball', '[SEP]'])
                                + [0, 0, 0])
  # Target (0, 0, 10, 20), area 200. Box (0,0,10,10): 100/200; (5,5,15,15): 50/(200+100-50);
  # (20,20,30,30): 0; the fourth box of image 2 is cut by R = 3; image 0 has 2 regions.
  iou = [0.5, 50 / 250, 0.0]
  np.testing.assert_allclose(batch['region_iou'][0], iou[:2] + [-1.0], rtol=1e-6)
  np.testing.assert_allclose(batch['region_iou'][3], iou, rtol=1e-6)
  np.testing.assert_allclose(batch['region_iou'][6], iou, rtol=1e-6)
  np.testing.assert_array_equal(batch['target_box'], [[0, 0, 10, 20]] * 12)


def test_ve_labels_and_retrieval_phrases_and_links(epochs):
  np.testing.assert_array_equal(epochs['ve']['label'], [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2])
  batch = epochs['retrieval']
  np.testing.assert_array_equal(batch['image_index'], [0, 1, 2, 3])
  dog = WORDS.index('dog') + 5
  # a dog on grass <i> | (dog) | [SEP]: the phrase is kept and linked to region 0.
  assert batch['input_ids_a'][0][6] == dog and batch['phrase_index'][0].tolist() == [6, 7]
  assert batch['phrase_region_links'][0][6] == 0


def test_hosts_are_disjoint_padded_alike_and_resume_exactly(datasets):
  settings = dict(batch_size=4, shuffle=True, repeat=True, pad_final_batch=True,
                  process_count=2)
  iterators = [_iterator(datasets['vqa'], 'vqa', process_index=h, **settings) for h in range(2)]
  assert [it.batches_per_epoch for it in iterators] == [2, 2]  # ceil(ceil(13 / 2) / 4)
  seen = []
  for it in iterators:
    epoch = [next(it) for _ in range(2)]
    batch = {k: np.concatenate([b[k] for b in epoch]) for k in epoch[0]}
    valid = batch['example_valid'] == 1
    # Block h of each global batch of 8: host 0 holds positions 0-3 and 8-11, host 1 4-7 and 12.
    assert valid.sum() == (8 if it is iterators[0] else 5)
    seen += batch['example_index'][valid].tolist()
    assert (batch['example_index'][~valid] == -1).all()
    assert (batch['question_id'][~valid] == -1).all() and (batch['input_ids_a'][~valid] == 0).all()
    assert (batch['answer_targets'][~valid] == 0).all()
  assert sorted(seen) == list(range(13)) and seen != sorted(seen)

  host0 = iterators[0]  # Now at epoch 1, batch 0.
  batches, states = [], []
  for _ in range(4):
    states.append(json.loads(json.dumps(host0.get_state())))
    batches.append(next(host0))
  assert [(s['epoch'], s['batch_in_epoch']) for s in states] == [(1, 0), (1, 1), (2, 0), (2, 1)]
  host0.set_state(states[1])  # Restarts the pipeline from the saved position.
  for expected in batches[1:]:
    got = next(host0)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  with pytest.raises(ValueError, match='other settings'):
    _iterator(datasets['vqa'], 'vqa', **{**settings, 'batch_size': 3}).set_state(states[1])


def test_incomplete_or_inconsistent_splits_are_refused(tmp_path, datasets):
  directory = str(tmp_path)
  _write_vocab(directory)
  bad = _examples('ve', num_images=1) + [dict(_examples('ve')[0], example_id='x',
                                              image_id='nowhere')]
  with pytest.raises(examples_lib.TaskDataError, match="image 'nowhere'"):
    examples_lib.write_task_split(directory, 'train', task='ve', records=_records(1),
                                  examples=bad)
  # The image records were written, but the split is not complete.
  assert os.path.isdir(os.path.join(directory, 'train'))
  with pytest.raises(examples_lib.TaskDataError, match='not complete'):
    _iterator(directory, 've')
  with pytest.raises(examples_lib.TaskDataError, match='label must be'):
    examples_lib.write_task_split(directory, 'train', task='ve', records=_records(1),
                                  examples=[dict(_examples('ve')[0], label=3)])
  with pytest.raises(examples_lib.TaskDataError, match='a \'ve\' dataset'):
    examples_lib.write_task_split(datasets['ve'], 'val', task='re', records=_records(1),
                                  examples=_examples('re', 1))
  with pytest.raises(FileExistsError):
    examples_lib.write_task_split(datasets['ve'], 'train', task='ve', records=_records(1),
                                  examples=_examples('ve', 1))
  with pytest.raises(ValueError, match='a \'vqa\' dataset, not'):
    _iterator(datasets['vqa'], 've')


def test_shapesworld_task_datasets_share_the_pretraining_vocabulary(tmp_path):
  from input_pipeline.shapesworld import build  # pylint: disable=import-outside-toplevel
  from input_pipeline.shapesworld import generate  # pylint: disable=import-outside-toplevel
  from input_pipeline.tasks import shapesworld_tasks  # pylint: disable=import-outside-toplevel
  pretraining = str(tmp_path / 'pretraining')
  world = generate.ShapesWorldConfig(image_size=32, feature_dim=16, seed=3)
  build.build_dataset(pretraining, build.BuildConfig(world=world, num_train_images=6,
                                                     num_val_images=0, min_concept_count=1))
  infos = {task: shapesworld_tasks.build_task_dataset(
      task, str(tmp_path / task), pretraining, num_train=2, num_val=1, num_test=0)
           for task in examples_lib.TASKS}
  for task, info in infos.items():
    for name in ('vocab.txt', 'id2phrase.json'):
      with open(os.path.join(pretraining, name), 'rb') as a, open(
          os.path.join(tmp_path, task, name), 'rb') as b:
        assert a.read() == b.read(), (task, name)
    assert sorted(info.splits) == ['train', 'val'] and info.splits['train']['num_images'] == 2
  assert infos['vqa'].answers == generate.vqa_answers()
  assert infos['vqa'].splits['train']['num_examples'] == 2 * world.questions_per_image
  _, vqa_examples = examples_lib.read_examples(str(tmp_path / 'vqa'), 'train')
  item = generate.generate_downstream(world, 'train', 0, 'vqa')[0]
  assert vqa_examples[0]['text'] == item['question']
  assert vqa_examples[0]['labels'] == [generate.vqa_answers().index(item['answers'][0][0])]
  _, re_examples = examples_lib.read_examples(str(tmp_path / 're'), 'val')
  target = generate.generate_downstream(world, 'val', 0, 're')[0]['target_box']
  np.testing.assert_allclose(re_examples[0]['target_box'], target)
  assert all(e['phrases'] == [] for e in re_examples)
  _, captions = examples_lib.read_examples(str(tmp_path / 'retrieval'), 'train')
  record = generate.generate_record(world, 'train', 0)
  assert [e['text'] for e in captions[:len(record['captions'])]] == record['captions']
  # A complete task directory is left alone; other settings are refused.
  assert shapesworld_tasks.build_task_dataset('ve', str(tmp_path / 've'), pretraining,
                                              num_train=2, num_val=1, num_test=0) == infos['ve']
  with pytest.raises(ValueError, match='holds ShapesWorld'):
    shapesworld_tasks.build_task_dataset('ve', str(tmp_path / 've'), pretraining, num_train=3,
                                         num_val=1, num_test=0)
  with pytest.raises(ValueError, match='feature_dim 134 differs'):
    shapesworld_tasks.build_task_dataset('ve', str(tmp_path / 've2'), pretraining,
                                         feature_dim=134)
