"""The VinVL and task importers as TFDS builders (issue 14; sources/import_builders.py).

Each builder is built by name with TFDS's own `tfds build` from a manual folder of real-format
files (the formats tests/test_vinvl_import.py and tests/test_task_importers.py write), read back
by `tfds.data_source` and `tfds.load`, checked field by field against what the files hold, laid
out (sources/layout.py) and read by the training / task pipelines; the import commands, which
now build through the same builders, write the same folders, byte for byte where they are
files and batch for batch through the pipelines.
"""

import json
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import main as tfds_main

from input_pipeline import import_vinvl
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline import train_vocab
from input_pipeline.sources import front_end
from input_pipeline.sources import layout
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators
from input_pipeline.tasks import refcoco
from input_pipeline.tasks import snli_ve
from input_pipeline.tasks import vqa
import sources_fixtures as sfx
import task_fixtures
import vinvl_fixtures as fx

_IMPORTS = '--imports=input_pipeline.sources.import_builders'
_LENGTHS = pretraining.Lengths(max_seq_length=8, max_phrases=2, max_tag_length=5,
                               max_img_seq_length=4)


def _tfds_build(*argv):
  # What the `tfds` console script (launch_cli) runs, in this process.
  parse = tfds_main._parse_flags  # pylint: disable=protected-access
  tfds_main.main(parse(['tfds', 'build', _IMPORTS, *argv]))


def _same_records(a_dir, b_dir, split):
  a = list(storage.read_dataset(a_dir, split).as_numpy_iterator())
  b = list(storage.read_dataset(b_dir, split).as_numpy_iterator())
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y) == sorted(storage.record_features(8).keys())
    for key in x:
      assert sfx.plain(x[key]) == sfx.plain(y[key]), (split, key)


def _same_batches(a, b):
  a, b = list(a), list(b)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----------------------------------------------------------------------------- VinVL

@pytest.fixture(scope='module')
def vinvl(tmp_path_factory):
  """A VinVL manual folder: train/ and test/ features.tsv + predictions.tsv (rows in reverse
  caption order), Karpathy's dataset_coco.json (103 in restval) and a SPICE phrases.json."""
  root = tmp_path_factory.mktemp('vinvl')
  manual = root / 'manual'
  rng = np.random.default_rng(7)
  splits = {'train': ['101', '102', '103'], 'test': ['201', '202']}
  images = {}
  for split, ids in splits.items():
    os.makedirs(manual / split)
    split_images = {i: fx.make_image(rng, i, num_boxes=2 + n) for n, i in enumerate(ids)}
    images.update(split_images)
    fx.write_tsv(manual / split / 'features.tsv',
                 [fx.feature_line(i, split_images[i].roi) for i in reversed(ids)])
    fx.write_tsv(manual / split / 'predictions.tsv',
                 [fx.prediction_line(split_images[i]) for i in ids])
  fx.write_json(manual / 'dataset_coco.json', {'images': [
      {'cocoid': int(i), 'split': 'restval' if i == '103' else split,
       'sentences': [{'raw': f'first {i}'}, {'raw': f'second {i}'}]}
      for split, ids in splits.items() for i in ids]})
  fx.write_json(manual / 'phrases.json', [
      {'image_id': f'{i}_{k}', 'test_tuples': [{'tuple': ['dog']}] * (k + 1)}
      for ids in splits.values() for i in ids for k in range(2)])
  train_vocab.write_vocab(['first', 'second', 'dog'] + sorted(images), str(root / 'vocab.txt'))
  _tfds_build('vinvl_features', f'--manual_dir={manual}', f'--data_dir={root}/tfds')
  return root, manual, splits, images


def _check_vinvl_record(record, image):
  assert record['region_features'].shape == (len(image.classes), 2054)
  assert record['region_features'][:, :2048].tobytes() == image.roi.tobytes()  # bit-exact
  np.testing.assert_allclose(record['region_features'][:, 2048:], image.box6(), rtol=1e-6)
  np.testing.assert_array_equal(record['boxes'], image.rects)
  assert [t.decode() for t in record['tags']] == image.classes
  assert [c.decode() for c in record['captions']] == [f'first {image.image_id}',
                                                      f'second {image.image_id}']
  assert sfx.plain(record['phrases']) == [[[b'dog']], [[b'dog'], [b'dog']]]
  assert sfx.plain(record['phrase_regions']) == [[-1], [-1, -1]]
  assert record['image_size'].tolist() == [480, 640] and record['image_png'] == b''


def test_vinvl_features_builds_by_name_and_reads_back(vinvl):
  root, _, splits, images = vinvl
  data_dir = f'{root}/tfds'
  for split, ids in splits.items():
    source = tfds.data_source('vinvl_features', split=split, data_dir=data_dir)
    assert [source[i]['image_id'].decode() for i in range(len(source))] == ids[::-1]
    loaded = list(tfds.as_numpy(tfds.load('vinvl_features', split=split, data_dir=data_dir)))
    assert len(loaded) == len(ids)
    for i, record in enumerate(loaded):
      _check_vinvl_record(record, images[record['image_id'].decode()])
      for key in record:
        assert sfx.plain(record[key]) == sfx.plain(source[i][key]), (split, i, key)
  builder = tfds.builder('vinvl_features', data_dir=data_dir)
  reports = builder.info.metadata['import_reports']
  assert {s: r['stats']['records'] for s, r in reports.items()} == {'train': 3, 'test': 2}
  with open(os.fspath(builder.data_dir) + '.reports/train_import_report.json') as f:
    assert json.load(f)['status'] == 'complete'


def test_the_import_command_writes_what_the_builder_built(vinvl):
  root, manual, splits, images = vinvl
  out, linked = str(root / 'out'), str(root / 'linked')
  for split in splits:
    assert import_vinvl.main([
        f'--features={manual}/{split}/features.tsv', f'--captions={manual}/dataset_coco.json',
        f'--predictions={manual}/{split}/predictions.tsv', f'--phrases={manual}/phrases.json',
        f'--out_dir={out}', f'--split={split}', f'--vocab={root}/vocab.txt',
        '--min_concept_count=1']) == 0
    shard = next(n for n in os.listdir(os.path.join(out, split)) if '.array_record-' in n)
    assert not os.path.isabs(os.readlink(os.path.join(out, split, shard)))  # movable folder
  assert [n.rpartition('.')[0] for n in sorted(os.listdir(os.path.join(out, '.tfds')))] == [
      'test', 'train']
  built = tfds.builder('vinvl_features', data_dir=f'{root}/tfds')
  layout.link_pretraining(os.fspath(built.data_dir), linked, list(splits),
                          tokenizer=f'{root}/vocab.txt', concepts_file=f'{out}/id2phrase.json')
  for split, ids in splits.items():
    records = list(storage.read_dataset(out, split).as_numpy_iterator())
    assert [r['image_id'].decode() for r in records] == ids[::-1]
    for record in records:
      _check_vinvl_record(record, images[record['image_id'].decode()])
    a = list(storage.read_dataset(linked, split).as_numpy_iterator())
    for x, y in zip(records, a):
      for key in x:
        assert sfx.plain(x[key]) == sfx.plain(y[key]), (split, key)
    np.testing.assert_array_equal(storage.RecordSource(out, split).regions_per_image(),
                                  [len(images[i].classes) for i in ids[::-1]])
  assert storage.read_metadata(out)['region_feature_dim'] == 2054
  tokenizer, concept_vocab = storage.load_vocabularies(out)
  batches = [pretraining.create_pretraining_iterator(
      d, 'train', tokenizer=tokenizer, concept_vocab=concept_vocab, lengths=_LENGTHS,
      batch_size=2, seed=0, shuffle=False, repeat=False, corrupt=False, pad_final_batch=True,
      process_index=0, process_count=1) for d in (out, linked)]
  _same_batches(*batches)
  # Re-importing a split (here without phrases) replaces its build; the other split's stays.
  assert import_vinvl.main([
      f'--features={manual}/test/features.tsv', f'--captions={manual}/dataset_coco.json',
      f'--predictions={manual}/test/predictions.tsv', f'--out_dir={out}', '--split=test',
      '--overwrite']) == 0
  assert [n.rpartition('.')[0] for n in sorted(os.listdir(os.path.join(out, '.tfds')))] == [
      'test', 'train']
  assert sfx.plain(next(storage.read_dataset(out, 'test').as_numpy_iterator())['phrases']) == [
      [], []]
  assert len(list(storage.read_dataset(out, 'train').as_numpy_iterator())) == 3


def test_one_split_by_kwargs_and_a_bad_kwarg_is_named(vinvl, tmp_path):
  root, manual, _, images = vinvl
  _tfds_build(f'vinvl_features/split=test,features={manual}/test/features.tsv,'
              f'predictions={manual}/test/predictions.tsv,captions={manual}/dataset_coco.json,'
              'builtin_phrases=True', f'--data_dir={tmp_path}')
  source = tfds.data_source('vinvl_features', split='test', data_dir=str(tmp_path))
  assert [source[i]['image_id'].decode() for i in range(len(source))] == ['202', '201']
  assert source[0]['region_features'][:, :2048].tobytes() == images['202'].roi.tobytes()
  with pytest.raises(front_end.BuilderKwargError, match=r"builder kwarg on_error='maybe': "
                     r"expected one of \['skip', 'raise'\]"):
    _tfds_build('vinvl_features/on_error=maybe', f'--manual_dir={manual}',
                f'--data_dir={tmp_path}/other')
  with pytest.raises(front_end.BuilderKwargError, match='unknown builder kwarg featres='):
    _tfds_build('vinvl_features/featres=x', f'--manual_dir={manual}',
                f'--data_dir={tmp_path}/other')


# ----------------------------------------------------------------------------- tasks

def _arange_features(n):
  return np.arange(n * 8, dtype=np.float32).reshape(n, 8) / 10


def _write(path, value):
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f)
  return str(path)


def _vqa_files(manual):
  _write(manual / 'v2_OpenEnded_mscoco_train2014_questions.json', {'questions': [
      {'question_id': 420, 'image_id': 42, 'question': 'What color is the dog?'},
      {'question_id': 70, 'image_id': 7, 'question': 'Is it a dog?'},
      {'question_id': 990, 'image_id': 999, 'question': 'Is it there?'}]})
  answers_420 = ['red'] * 5 + ['Red '] + ['brown'] * 2 + ['black', 'yes']
  _write(manual / 'v2_mscoco_train2014_annotations.json', {'annotations': [
      {'question_id': 420, 'multiple_choice_answer': 'red',
       'answers': [{'answer': a} for a in answers_420]},
      {'question_id': 70, 'multiple_choice_answer': 'yes',
       'answers': [{'answer': 'yes'}] * 9 + [{'answer': 'no'}]},
      {'question_id': 990, 'multiple_choice_answer': 'no', 'answers': [{'answer': 'no'}] * 10}]})
  _write(manual / 'v2_OpenEnded_mscoco_val2014_questions.json', {'questions': [
      {'question_id': 71, 'image_id': 7, 'question': 'Is the dog red?'}]})
  with open(manual / 'trainval_ans2label.pkl', 'wb') as f:
    pickle.dump({'yes': 0, 'no': 1, 'red': 2, 'brown': 3}, f)
  return {'train': [(420, '42', [0, 2, 3], [1 / 3, 1.0, 2 / 3]), (70, '7', [0, 1], [1.0, 1 / 3])],
          'val': [(71, '7', [], [])]}


def _vqa_summary(e):
  return (e['question_id'], e['image_id'], e['labels'], e['scores'])


def _vqa_import(manual, out, split, images):
  return vqa.import_vqa(out_dir=out, split=split, image_sources=images,
                        questions=f'{manual}/v2_OpenEnded_mscoco_{split}2014_questions.json',
                        annotations=(f'{manual}/v2_mscoco_train2014_annotations.json'
                                     if split == 'train' else None),
                        answer_vocab=f'{manual}/trainval_ans2label.pkl', max_error_fraction=0.5)


def _ve_files(manual):
  lines = [
      {'sentence2': 'A dog is red.', 'gold_label': 'entailment', 'Flickr30K_ID': '42',
       'pairID': '42r1e'},
      {'sentence2': 'A dog sleeps.', 'gold_label': 'neutral', 'Flickr30K_ID': '7',
       'pairID': '7r1n'},
      {'sentence2': 'A cat.', 'gold_label': 'contradiction', 'Flickr30K_ID': '42',
       'pairID': '42r1c'},
      {'sentence2': 'Unclear.', 'gold_label': '-', 'Flickr30K_ID': '42', 'pairID': 'x'},
      {'sentence2': 'Elsewhere.', 'gold_label': 'neutral', 'Flickr30K_ID': '5', 'pairID': 'y'}]
  (manual / 'snli_ve_dev.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  _write(manual / 'dev_sgs.json', [[[['dog', 'red']], '42r1e']])
  return {'dev': [('42r1e', '42', 2, [['dog', 'red']]), ('7r1n', '7', 1, None),
                  ('42r1c', '42', 0, None)]}


def _ve_summary(e):
  # Phrases of the examples without given ones come from the built-in extractor.
  return (e['example_id'], e['image_id'], e['label'],
          e['phrases'] if e['example_id'] == '42r1e' else None)


def _ve_import(manual, out, split, images):
  return snli_ve.import_snli_ve(jsonl=f'{manual}/snli_ve_{split}.jsonl', out_dir=out,
                                split=split, image_sources=images,
                                phrases=f'{manual}/{split}_sgs.json', max_error_fraction=0.5)


def _re_files(manual):
  refs = [
      {'ref_id': 1, 'image_id': 42, 'ann_id': 500, 'split': 'testA',
       'sentences': [{'sent': 'left dog', 'sent_id': 11}, {'sent': 'the dog', 'sent_id': 12}]},
      {'ref_id': 2, 'image_id': 7, 'ann_id': 501, 'split': 'train',
       'sentences': [{'sent': 'small dog', 'sent_id': 21}]},
      {'ref_id': 3, 'image_id': 77, 'ann_id': 500, 'split': 'testA',
       'sentences': [{'sent': 'no image'}]}]
  with open(manual / 'refs(unc).p', 'wb') as f:
    pickle.dump(refs, f)
  _write(manual / 'instances.json', {'annotations': [
      {'id': 500, 'image_id': 42, 'bbox': [10, 20, 30, 40]},
      {'id': 501, 'image_id': 7, 'bbox': [0.5, 0, 5.25, 5]}]})
  return {'testA': [('1_11', '42', 'left dog', [10, 20, 40, 60]),
                    ('1_12', '42', 'the dog', [10, 20, 40, 60])],
          'train': [('2_21', '7', 'small dog', [0.5, 0, 5.75, 5])]}


def _re_summary(e):
  return (e['example_id'], e['image_id'], e['text'], e['target_box'])


def _re_import(manual, out, split, images):
  return refcoco.import_refcoco(refs=f'{manual}/refs(unc).p', instances=f'{manual}/instances.json',
                                ref_split=split, out_dir=out, split=split, image_sources=images,
                                max_error_fraction=0.5)


TASKS = {  # name: (task, write the manual folder, example summary, import command)
    'vqa_task/v2': ('vqa', _vqa_files, _vqa_summary, _vqa_import),
    'snli_ve_task': ('ve', _ve_files, _ve_summary, _ve_import),
    'refcoco_task': ('re', _re_files, _re_summary, _re_import),
}


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
  """An image-record dataset keyed like a VinVL COCO import (ids normalise to 42 and 7)."""
  directory = str(tmp_path_factory.mktemp('coco'))
  task_fixtures.write_coco_images(directory, _arange_features)
  return directory


@pytest.mark.parametrize('name', list(TASKS))
def test_task_builder_builds_by_name_reads_back_and_equals_the_import_command(
    name, coco, tmp_path):
  task, write_files, summary, import_command = TASKS[name]
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  expected = write_files(manual)
  data_dir = str(tmp_path / 'tfds')
  _tfds_build(f'{name}/images={coco}/train,max_error_fraction=0.5', f'--manual_dir={manual}',
              f'--data_dir={data_dir}')
  builder = tfds.builder(name, data_dir=data_dir)
  assert sorted(builder.info.splits) == sorted(expected)
  assert builder.info.metadata['task'] == task
  for split, wanted in expected.items():
    # tfds.data_source / tfds.load: image records, in order of first use, with their examples.
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    loaded = list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))
    assert len(loaded) == len(source) == len(dict.fromkeys(w[1] for w in wanted))
    examples = []
    for i, record in enumerate(loaded):
      for key in record:
        assert sfx.plain(record[key]) == sfx.plain(source[i][key]), (split, i, key)
      boxes = task_fixtures.BOXES_42[:3 if record['image_id'] == b'42' else 1]
      np.testing.assert_array_equal(record['boxes'], boxes)
      np.testing.assert_array_equal(record['region_features'],
                                    _arange_features(len(boxes)))
      assert record['captions'].tolist() == []  # a task's records carry no captions
      examples += [(int(p), json.loads(e)) for p, e in zip(record['example_positions'],
                                                          record['examples'])]
    assert [summary(e) for _, e in sorted(examples)] == wanted
    # The task layout, against the import command's folder.
    laid_out, imported = str(tmp_path / 'laid_out'), str(tmp_path / 'imported')
    info = layout.link_task(os.fspath(builder.data_dir), laid_out, split)
    assert import_command(manual, imported, split, [(coco, 'train')]).splits[split] == (
        info.splits[split])
    _, stored = examples_lib.read_examples(laid_out, split)
    assert [summary(e) for e in stored] == wanted
    for file in (f'{split}{examples_lib.EXAMPLES_SUFFIX}', examples_lib.TASK_FILE,
                 'metadata.json', 'vocab.txt', storage.CONCEPTS_FILE) + (
                     (examples_lib.ANSWERS_FILE,) if task == 'vqa' else ()):
      with open(os.path.join(laid_out, file), 'rb') as a, open(os.path.join(imported, file),
                                                               'rb') as b:
        assert a.read() == b.read(), file
    _same_records(laid_out, imported, split)
    with open(os.path.join(imported, f'{split}_import_report.json')) as f:
      assert json.load(f)['stats']['examples'] == len(wanted)
  # The task pipeline reads both folders alike (one split: each pipeline costs seconds).
  split = next(iter(expected))
  batches = [list(task_iterators.create_task_iterator(
      d, task, split, lengths=_LENGTHS, batch_size=2, seed=0, shuffle=False, repeat=False,
      pad_final_batch=True, process_index=0, process_count=1)) for d in (laid_out, imported)]
  _same_batches(*batches)
  assert sum(int(b['example_valid'].sum()) for b in batches[0]) == len(expected[split])
  if task == 'vqa':
    assert examples_lib.load_answers(laid_out) == ['yes', 'no', 'red', 'brown']


def test_a_task_import_that_loses_too_much_writes_no_split(coco, tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  _ve_files(manual)
  out = str(tmp_path / 've')
  with pytest.raises(examples_lib.TaskDataError, match='40.00% of 5 examples'):
    snli_ve.import_snli_ve(jsonl=f'{manual}/snli_ve_dev.jsonl', out_dir=out, split='dev',
                           image_sources=[(coco, 'train')])
  assert sorted(os.listdir(out)) == ['dev_import_report.json', 'mvp_owner.json']
  with pytest.raises(front_end.BuilderKwargError, match='images=.*not an image-record split'):
    _tfds_build(f'snli_ve_task/images={manual}/train', f'--manual_dir={manual}',
                f'--data_dir={tmp_path}/tfds')
