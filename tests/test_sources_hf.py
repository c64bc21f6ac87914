"""A Hugging Face `datasets` table saved locally: splits, ids, skips, built and read back."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline.sources import builders
from input_pipeline.sources import hf_table
from input_pipeline.sources import layout
from input_pipeline.tasks import iterators as task_iterators
import sources_fixtures as fx

datasets = pytest.importorskip('datasets')


def test_saved_dataset_dict_builds_retrieval_sets(tmp_path):
  ids = fx.write_hf_dataset(tmp_path / 'hf')
  source = hf_table.HfTableSource(str(tmp_path / 'hf'), image_column='image',
                                  text_column='caption', id_column='photo_id', shard_size=2)
  assert source.splits() == {'train': ['train-000000', 'train-000001', 'train-000002'],
                             'test': ['test-000000', 'test-000001']}
  samples, problems = source.read('train-000001')
  assert not problems and [s.image_id for s in samples] == ['p2', 'p3']
  assert samples[0].captions == [fx.caption(2)] and samples[0].image[:2] == b'\xff\xd8'

  builder = builders.HfImageText(image_column='image', text_column='caption',
                                 id_column='photo_id', shard_size=2, regions=fx.RandomRegions(),
                                 data_dir=str(tmp_path / 'tfds'))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'hf')))
  for split, expected in ids.items():
    assert [r['image_id'] for r in layout.decoded_records(builder.data_dir, split)] == expected
  pre = tmp_path / 'pre'
  layout.link_pretraining(builder.data_dir, str(pre), ['train'],
                          tokenizer=fx.write_vocab(tmp_path / 'vocab.txt'))
  layout.write_retrieval(builder.data_dir, str(tmp_path / 'task'), {'test': ['test']},
                         vocab_dir=str(pre))
  it = task_iterators.create_task_iterator(str(tmp_path / 'task'), 'retrieval', 'test', lengths=fx.TASK_LENGTHS,
                                           batch_size=3, seed=0, shuffle=False, repeat=False,
                                           pad_final_batch=True, process_index=0,
                                           process_count=1)
  batch = next(iter(it))
  np.testing.assert_array_equal(batch['image_index'], [0, 1, 2])
  assert batch['img_feats'].shape[-1] == fx.FEATURE_DIM


def test_parquet_table_with_bad_rows(tmp_path):
  rows = {'img': [fx.jpeg(20, 20, 0), b'', fx.jpeg(20, 20, 2), fx.jpeg(20, 20, 3)],
          'text': [['a dog', 'a brown dog'], ['a cat'], ['   '], None]}
  table = datasets.Dataset.from_dict(rows)
  (tmp_path / 'pq').mkdir()
  table.to_parquet(str(tmp_path / 'pq' / 'part-0.parquet'))
  source = hf_table.HfTableSource(str(tmp_path / 'pq'), image_column='img', text_column='text')
  samples, problems = source.read('train-000000')
  assert [(s.image_id, s.captions) for s in samples] == [('train-0', ['a dog', 'a brown dog'])]
  assert [(p.key, p.kind) for p in problems] == [('train-1', 'missing_image'),
                                                 ('train-2', 'bad_caption'),
                                                 ('train-3', 'missing_caption')]
  with pytest.raises(ValueError, match=r"no columns \['caption'\]"):
    hf_table.HfTableSource(str(tmp_path / 'pq'), image_column='img', text_column='caption')
