"""COCO / Flickr30K Karpathy sources: split membership, ids, tfds build, read back for training."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import phrase_extractor
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.sources import build
from input_pipeline.sources import builders
from input_pipeline.sources import karpathy
from input_pipeline.sources import layout
from input_pipeline.tasks import iterators as task_iterators
import sources_fixtures as fx


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
  root = tmp_path_factory.mktemp('coco')
  splits = fx.write_karpathy_coco(root)
  return root, splits


def test_split_membership_and_ids_exactly_as_the_json(coco):
  root, splits = coco
  source = karpathy.KarpathySource(root / 'dataset_coco.json', root, shard_size=2)
  assert {s: source.image_ids(s) for s in source.splits()} == splits
  assert source.splits()['test'] == ['test-00000', 'test-00001']
  samples, problems = source.read('test-00000')
  assert not problems
  assert [s.image_id for s in samples] == ['391895', '522418']
  assert [len(s.captions) for s in samples] == [5, 5]   # the 6-caption image keeps its first 5
  data = json.load(open(root / 'dataset_coco.json'))
  assert samples[1].captions == [' '.join(c['raw'].split())
                                 for c in data['images'][1]['sentences'][:5]]
  all_caps = karpathy.KarpathySource(root / 'dataset_coco.json', root, captions_per_image=None)
  assert [len(s.captions) for s in all_caps.read('restval-00000')[0]] == [5, 7]


def test_bad_json_names_the_entry(tmp_path):
  (tmp_path / 'dataset_coco.json').write_text(json.dumps({'images': [
      {'filename': 'a.jpg', 'cocoid': 1, 'split': 'testing', 'sentences': []}]}))
  with pytest.raises(karpathy.KarpathyError, match=r'images\[0\] \(a.jpg\): split .testing.'):
    karpathy.KarpathySource(tmp_path / 'dataset_coco.json', tmp_path).splits()
  with pytest.raises(karpathy.KarpathyError, match='split sizes'):
    fx.write_karpathy_coco(tmp_path)
    karpathy.load_karpathy.cache_clear()
    karpathy.KarpathySource(tmp_path / 'dataset_coco.json', tmp_path, check_sizes='coco')


def test_coco_builder_to_pretraining_and_retrieval(coco, tmp_path):
  root, splits = coco
  source = karpathy.KarpathySource(root / 'dataset_coco.json', root)
  regions = fx.given_features(source, tmp_path / 'features')
  builder = builders.KarpathyCoco(regions=regions, data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  built = tfds.builder_from_directory(builder.data_dir)
  assert {s: built.info.splits[s].num_examples for s in splits} == {
      s: len(v) for s, v in splits.items()}
  test = built.as_data_source('test')
  assert [test[i]['image_id'].decode() for i in range(len(test))] == splits['test']
  assert builder.problems('test')['records'] == 3

  vocab = fx.write_vocab(tmp_path / 'vocab.txt')
  pre = tmp_path / 'pretrain'
  assert layout.link_pretraining(builder.data_dir, str(pre), ['train', 'restval'],
                                 tokenizer=vocab) == {'train': 3, 'restval': 2}
  records = {r['image_id'].decode(): r for r in storage.read_dataset(str(pre), 'train')
             .as_numpy_iterator()}
  assert list(records) == splits['train']
  first = records['184613']
  assert first['region_features'].shape == (5, fx.FEATURE_DIM)
  assert [t.decode() for t in first['tags']] == ['dog', 'horse', '', 'boat', 'dog']
  decoded = next(layout.decoded_records(builder.data_dir, 'train'))
  assert decoded['image_id'] == '184613' and len(decoded['phrases']) == 5
  assert decoded['phrases'][0] == [tuple(p) for p in phrase_extractor.extract_phrases(
      decoded['captions'][0])]
  tokenizer, concept_vocab = storage.load_vocabularies(str(pre))
  it = pretraining.create_pretraining_iterator(
      str(pre), 'train', tokenizer=tokenizer, concept_vocab=concept_vocab,
      lengths=pretraining.Lengths(max_seq_length=16, max_phrases=4, max_tag_length=8,
                                  max_img_seq_length=6),
      batch_size=5, seed=0, shuffle=False, repeat=False, corrupt=True, process_index=0,
      process_count=1)
  batches = list(it)
  assert len(batches) == 3 and batches[0]['img_feats'].shape == (5, 6, fx.FEATURE_DIM)
  np.testing.assert_array_equal(np.concatenate([b['image_index'] for b in batches]),
                                np.repeat([0, 1, 2], 5))

  task = tmp_path / 'retrieval'
  info = layout.write_retrieval(builder.data_dir, str(task), {'train': ['train', 'restval'],
                                                              'test': ['test']}, vocab_dir=str(pre))
  assert info.splits['train'] == {'num_examples': 25, 'num_images': 5,
                                  'source': f'{builder.data_dir}:train+restval'}
  it = task_iterators.create_task_iterator(str(task), 'retrieval', 'test', lengths=fx.TASK_LENGTHS, batch_size=4, seed=0,
                                           shuffle=False, repeat=False, pad_final_batch=True,
                                           process_index=0, process_count=1)
  batches = list(it)
  valid = np.concatenate([b['example_valid'] for b in batches]).astype(bool)
  assert valid.sum() == 15
  np.testing.assert_array_equal(np.concatenate([b['image_index'] for b in batches])[valid],
                                np.repeat([0, 1, 2], 5))


def test_flickr_builder_keeps_file_name_ids(tmp_path):
  splits = fx.write_karpathy_flickr(tmp_path / 'fk')
  source = karpathy.KarpathySource(tmp_path / 'fk' / 'dataset_flickr30k.json',
                                   tmp_path / 'fk' / 'flickr30k-images')
  builder = builders.KarpathyFlickr30k(regions=fx.given_features(source, tmp_path / 'feat'),
                                       data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'fk')))
  for split, ids in splits.items():
    data = builder.as_data_source(split)
    assert [data[i]['image_id'].decode() for i in range(len(data))] == ids


def test_command_line_build_on_beam_with_phrase_file(tmp_path):
  splits = fx.write_karpathy_flickr(tmp_path / 'fk')
  source = karpathy.KarpathySource(tmp_path / 'fk' / 'dataset_flickr30k.json',
                                   tmp_path / 'fk' / 'flickr30k-images')
  fx.given_features(source, tmp_path / 'feat')
  phrases = {image_id: [[['dog'], ['dog', 'brown']]] * 5 for ids in splits.values()
             for image_id in ids}
  (tmp_path / 'fk_sg.json').write_text(json.dumps(phrases))
  argv = ['build', '--source=karpathy_flickr30k', f'--manual_dir={tmp_path / "fk"}',
          f'--features={tmp_path / "feat"}', f'--data_dir={tmp_path / "tfds"}',
          f'--phrases={tmp_path / "fk_sg.json"}', '--beam',
          '--beam_pipeline_options=direct_num_workers=1', f'--pretrain_out={tmp_path / "pre"}',
          '--pretrain_splits=train', f'--tokenizer={fx.write_vocab(tmp_path / "vocab.txt")}',
          f'--retrieval_out={tmp_path / "task"}', '--retrieval_splits=test=test,val=val']
  assert build.main(argv) == 0
  info = task_iterators.load_task_info(str(tmp_path / 'task'))
  assert {s: v['num_images'] for s, v in info.splits.items()} == {'test': 2, 'val': 1}
  record = next(layout.decoded_records(
      str(tmp_path / 'tfds' / 'karpathy_flickr30k' / 'captions5' / '1.0.0'), 'train'))
  assert record['phrases'][0] == [('dog',), ('dog', 'brown')]
  _, concept_vocab = storage.load_vocabularies(str(tmp_path / 'pre'))
  assert ('dog', 'brown') in concept_vocab.phrase2id
