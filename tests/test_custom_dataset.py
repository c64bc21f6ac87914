"""Tests of input_pipeline.tasks.custom: hand-written JSON lines + plain images -> batches."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from input_pipeline import concepts
from input_pipeline import ops
from input_pipeline import region_features
from input_pipeline import storage
from input_pipeline import train_vocab
from input_pipeline.tasks import custom
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators

FEATURE_DIM = 20
LENGTHS = task_iterators.Lengths(max_seq_length=12, max_phrases=3, max_tag_length=4,
                                 max_img_seq_length=6)


def _write_lines(path, lines):
  path.write_text(''.join(json.dumps(line) + '\n' for line in lines))
  return str(path)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('custom')
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(root / f'img{i}.png')
  train = _write_lines(root / 'train.jsonl', [
      {'image': 'img0.png', 'text': 'a red circle is left of a blue square',
       'label': 'entailment'},
      {'image': 'img0.png', 'text': 'a green circle is above a square', 'label': 'neutral'},
      {'image': 'img1.png', 'text': 'two red squares', 'label': 'contradiction'},
      {'image': 'img2.png', 'text': 'a blue circle', 'label': 'entailment'},
  ])
  val = _write_lines(root / 'val.jsonl', [
      {'image': 'img2.png', 'text': 'a red square', 'label': 1}])
  out = str(root / 'dataset')
  assert custom.main(['--task=ve', f'--train={train}', f'--val={val}', f'--image_root={root}',
                      f'--out_dir={out}', f'--feature_dim={FEATURE_DIM}', '--grid=2',
                      '--vocab_size=200']) == 0
  return root, out


def test_plain_images_without_boxes_become_batches(built):
  root, out = built
  info = examples_lib.load_task_info(out)
  assert info.task == 've' and info.splits['train'] == {'num_examples': 4, 'num_images': 3,
                                                        'source': str(root / 'train.jsonl')}
  assert info.splits['val']['num_images'] == 1
  iterator = task_iterators.create_task_iterator(
      out, 've', 'train', lengths=LENGTHS, batch_size=4, seed=0, shuffle=False, repeat=False,
      pad_final_batch=True, process_index=0, process_count=1, preprocess=ops.PRESETS['ve'],
      batch_keys=('label',))
  batches = list(iterator)
  assert len(batches) == 1
  batch = batches[0]
  assert set(batch) == set(task_iterators.batch_keys(('label',)))
  np.testing.assert_array_equal(batch['label'], [2, 1, 0, 2])
  np.testing.assert_array_equal(batch['image_index'], [0, 0, 1, 2])
  la, n = LENGTHS.text_length, 2 * 2 + 1  # a 2x2 grid and the whole image
  np.testing.assert_array_equal(batch['img_index'], [[la, la + n]] * 4)
  np.testing.assert_array_equal(batch['attention_mask_b'][0], [1, 1, 0, 0] + [1] * n + [0])
  tokenizer, _ = storage.load_vocabularies(out)
  np.testing.assert_array_equal(batch['input_ids_b'][0],  # no tags: [CLS] [SEP]
                                [tokenizer.cls_id, tokenizer.sep_id, 0, 0])
  image = np.asarray(Image.open(root / 'img1.png').convert('RGB'))
  expected = region_features.extract_region_features(
      image, region_features.grid_boxes(24, 32, 2), FEATURE_DIM)
  np.testing.assert_allclose(batch['img_feats'][2, :n], expected, rtol=1e-6)
  assert (batch['img_feats'][2, n:] == 0).all()
  assert batch['phrase_index'][0, 1] > batch['phrase_index'][0, 0]  # extracted phrases kept
  assert (batch['input_ids_a'][:, 0] == tokenizer.cls_id).all()


def test_features_files_vqa_answers_re_boxes_and_errors(built, tmp_path):
  root, out = built
  vocab = os.path.join(out, 'vocab.txt')
  boxes = np.float32([[0, 0, 10, 10], [5, 5, 20, 20]])
  np.savez(tmp_path / 'f.npz', features=np.ones((2, FEATURE_DIM - 6), np.float32), boxes=boxes,
           image_size=np.int32([40, 40]))
  train = _write_lines(tmp_path / 'vqa.jsonl', [
      {'features': 'f.npz', 'tags': ['circle', 'square'], 'question': 'what shape?',
       'answers': ['circle', 'circle', 'square']},
      {'features': 'f.npz', 'tags': ['circle', 'square'], 'question': 'is it red?',
       'answers': [['yes', 1.0], ['no', 0.3]]},
      {'features': 'f.npz', 'tags': ['circle', 'square'], 'question': 'colour?', 'answer': 'yes'},
  ])
  info = custom.build_custom_dataset(task='vqa', splits={'train': train},
                                     out_dir=str(tmp_path / 'vqa'), image_root=str(tmp_path),
                                     feature_dim=FEATURE_DIM, vocab=vocab)
  assert info.answers == ['yes', 'circle', 'no', 'square']
  _, stored = examples_lib.read_examples(str(tmp_path / 'vqa'), 'train')
  assert [(e['labels'], e['scores']) for e in stored] == [
      ([1, 3], [2 / 3, 1 / 3]), ([0, 2], [1.0, 0.3]), ([0], [1.0])]
  source = storage.RecordSource(str(tmp_path / 'vqa'), 'train')
  record = source.features.deserialize_example_np(source.read(np.arange(1))[0])
  np.testing.assert_allclose(record['region_features'][:, -6:],
                             region_features.box_features(boxes, 40, 40))
  assert [t.decode() for t in record['tags']] == ['circle', 'square']

  re_lines = _write_lines(tmp_path / 're.jsonl', [
      {'image': str(root / 'img0.png'), 'boxes': [[0, 0, 16, 12], [16, 12, 32, 24]],
       'text': 'the left part', 'box': [0, 0, 16, 24]}])
  custom.build_custom_dataset(task='re', splits={'train': re_lines}, out_dir=str(tmp_path / 're'),
                              feature_dim=FEATURE_DIM, vocab=vocab)
  _, stored = examples_lib.read_examples(str(tmp_path / 're'), 'train')
  assert stored[0]['target_box'] == [0, 0, 16, 24] and stored[0]['phrases'] == []

  bad = _write_lines(tmp_path / 'bad.jsonl', [
      {'image': str(root / 'img0.png'), 'text': 'a circle', 'label': 'entailment'},
      {'image': str(root / 'img0.png'), 'text': 'a circle', 'label': 'maybe'}])
  with pytest.raises(examples_lib.TaskDataError, match=r'bad.jsonl:2: "label" must be'):
    custom.build_custom_dataset(task='ve', splits={'train': bad}, out_dir=str(tmp_path / 'bad'),
                                feature_dim=FEATURE_DIM, vocab=vocab)
  with pytest.raises(FileExistsError):
    custom.build_custom_dataset(task='ve', splits={'train': train}, out_dir=out, vocab=vocab)


def test_vocab_dir_reuses_the_word_and_concept_vocabularies_unchanged(built, tmp_path):
  """A dataset built for fine-tuning keeps the checkpoint's word ids AND concept rows."""
  root, out = built
  pretraining = tmp_path / 'pretraining'
  pretraining.mkdir()
  words = ['a', 'red', 'circle', 'square', 'blue', 'what', 'shape', 'green']
  train_vocab.write_vocab(words, str(pretraining / 'words.txt'))
  # Concept rows chosen by the pre-training data, not by this dataset's phrases.
  storage.save_vocabularies(str(pretraining), str(pretraining / 'words.txt'),
                            concepts.ConceptVocab({20: ('square',), 21: ('circle', 'red')},
                                                  word_vocab_size=13))
  (pretraining / 'words.txt').unlink()
  train = _write_lines(tmp_path / 'train.jsonl', [
      {'image': str(root / 'img0.png'), 'text': 'a blue circle', 'label': 'entailment',
       'phrases': [['circle', 'blue'], ['circle']]}])
  dataset = str(tmp_path / 've')
  assert custom.main(['--task=ve', f'--train={train}', f'--out_dir={dataset}',
                      f'--vocab_dir={pretraining}', f'--feature_dim={FEATURE_DIM}',
                      '--grid=2']) == 0
  for name in ('vocab.txt', storage.CONCEPTS_FILE):
    with open(pretraining / name, 'rb') as a, open(os.path.join(dataset, name), 'rb') as b:
      assert a.read() == b.read(), name
  _, concept_vocab = storage.load_vocabularies(dataset)
  assert concept_vocab.num_rows == 22  # not rebuilt from ('circle', 'blue'), ('circle')
  with pytest.raises(ValueError, match='vocab_dir .* or vocab'):
    custom.build_custom_dataset(task='ve', splits={'train': train}, out_dir=str(tmp_path / 'x'),
                                vocab_dir=str(pretraining), vocab=str(pretraining / 'vocab.txt'))


def test_vqa_with_fewer_than_three_answers_everywhere_warns(built, tmp_path, capsys):
  root, out = built
  lines = [{'image': str(root / 'img0.png'), 'question': f'what shape {k}?',
            'answers': ['circle']} for k in range(3)]
  train = _write_lines(tmp_path / 'vqa.jsonl', lines)
  custom.build_custom_dataset(task='vqa', splits={'train': train}, out_dir=str(tmp_path / 'a'),
                              feature_dim=FEATURE_DIM, vocab=os.path.join(out, 'vocab.txt'),
                              grid=2)
  err = capsys.readouterr().err
  assert "VQA split 'train': every example lists fewer than 3 annotator answers" in err
  assert 'at most 1/3' in err and '"answer": "yes"' in err
  lines[0]['answers'] = ['circle', 'circle', 'square']  # one example with 3 annotators: fine
  train = _write_lines(tmp_path / 'vqa3.jsonl', lines)
  custom.build_custom_dataset(task='vqa', splits={'train': train}, out_dir=str(tmp_path / 'b'),
                              feature_dim=FEATURE_DIM, vocab=os.path.join(out, 'vocab.txt'),
                              grid=2)
  assert 'annotator answers' not in capsys.readouterr().err


def _stored_features(directory, split):
  source = storage.RecordSource(directory, split)
  return [source.features.deserialize_example_np(r)['region_features']
          for r in source.read(np.arange(source.num_images))]


def test_standardize_features_rescales_with_the_training_statistics(built, tmp_path):
  """Plain images of one shape on a grey background: most grid cells hold the same grey, so the
  raw rows share a large common part; standardised, every appearance dim has zero mean and unit
  variance over the training regions, the box dims are untouched and val uses train's map."""
  root, out = built
  rng = np.random.default_rng(1)
  for i in range(4):
    image = np.full((16, 16, 3), 40 + 10 * i, np.uint8)
    y, x = rng.integers(0, 8, 2)
    image[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
    Image.fromarray(image).save(tmp_path / f'shape{i}.png')
  train = _write_lines(tmp_path / 'train.jsonl', [
      {'image': f'shape{i}.png', 'question': 'what colour is it?', 'answer': str(i)}
      for i in range(3)])
  val = _write_lines(tmp_path / 'val.jsonl', [
      {'image': 'shape3.png', 'question': 'what colour is it?', 'answer': '0'}])
  splits = {'train': train, 'val': val}
  dataset = str(tmp_path / 'std')
  assert custom.main(['--task=vqa', f'--train={train}', f'--val={val}', f'--out_dir={dataset}',
                      f'--feature_dim={FEATURE_DIM}', '--grid=2', '--standardize_features',
                      f'--vocab={os.path.join(out, "vocab.txt")}']) == 0
  raw = str(tmp_path / 'raw')
  custom.build_custom_dataset(task='vqa', splits=splits, out_dir=raw, feature_dim=FEATURE_DIM,
                              grid=2, vocab=os.path.join(out, 'vocab.txt'))
  with open(os.path.join(dataset, custom.NORM_FILE)) as f:
    norm = json.load(f)
  mean, std = np.float32(norm['mean']), np.float32(norm['std'])
  dims = FEATURE_DIM - 6
  assert mean.shape == std.shape == (dims,)
  train_raw, train_std = np.concatenate(_stored_features(raw, 'train')), np.concatenate(
      _stored_features(dataset, 'train'))
  np.testing.assert_allclose(train_std[:, :dims].mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(train_std[:, :dims].std(0), 1, atol=1e-4)
  np.testing.assert_array_equal(train_std[:, dims:], train_raw[:, dims:])  # the box dims
  [val_raw], [val_std] = _stored_features(raw, 'val'), _stored_features(dataset, 'val')
  np.testing.assert_allclose(val_std[:, :dims], (val_raw[:, :dims] - mean) / std, rtol=1e-4,
                             atol=1e-4)
  # The raw rows: the common part dominates; what the standardised rows remove.
  assert np.linalg.norm(train_raw[:, :dims].mean(0)) > np.linalg.norm(
      train_raw[:, :dims] - train_raw[:, :dims].mean(0), axis=1).mean()

  with pytest.raises(ValueError, match='pixel mode runs no extractor'):
    custom.build_custom_dataset(task='vqa', splits=splits, out_dir=str(tmp_path / 'p'),
                                pixels=True, standardize_features=True)
  np.savez(tmp_path / 'f.npz', features=np.ones((2, FEATURE_DIM), np.float32),
           boxes=np.float32([[0, 0, 4, 4], [4, 4, 8, 8]]), image_size=np.int32([8, 8]))
  given = _write_lines(tmp_path / 'given.jsonl', [
      {'features': 'f.npz', 'question': 'what?', 'answer': 'yes'}])
  with pytest.raises(examples_lib.TaskDataError, match='given.jsonl:1: standardize_features'):
    custom.build_custom_dataset(task='vqa', splits={'train': given}, out_dir=str(tmp_path / 'g'),
                                feature_dim=FEATURE_DIM, standardize_features=True)
