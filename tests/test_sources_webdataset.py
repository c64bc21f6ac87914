"""img2dataset webdataset shards: broken samples counted and named, SigLIP extraction per shard
(resumable, split over hosts), the tfds build read back by the pre-training pipeline."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.sources import builders
from input_pipeline.sources import extract
from input_pipeline.sources import layout
from input_pipeline.sources import regions as regions_lib
from input_pipeline.sources import webdataset
import sources_fixtures as fx


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  folder = tmp_path_factory.mktemp('wds')
  return folder, fx.write_webdataset(folder)


def test_expand_shards_brace_ranges_and_globs(shards):
  folder, _ = shards
  braces = webdataset.expand_shards([f'{folder}/{{00000..00002}}.tar'])
  assert [webdataset.shard_name(p) for p in braces] == ['00000', '00001', '00002']
  assert len(webdataset.expand_shards([f'{folder}/*.tar'])) == 4
  with pytest.raises(FileNotFoundError, match='matches no file'):
    webdataset.expand_shards([f'{folder}/nothing-*.tar'])


def test_broken_samples_are_counted_by_shard_and_key(shards):
  folder, expected = shards
  source = webdataset.WebdatasetSource([f'{folder}/*.tar'])
  got_bad, got_good = {}, []
  for shard in source.splits()['train']:
    samples, problems = source.read(shard)
    got_good += [s.image_id for s in samples]
    got_bad.update({(p.shard, p.key): p.kind for p in problems})
  # The undecodable JPEG is only found when decoding (the featurizer); the reader keeps it.
  reader_bad = {k: v for k, v in expected['bad'].items() if v != 'image_unreadable'}
  assert got_bad == reader_bad
  assert got_good == expected['good'][:4] + ['000009003'] + expected['good'][4:]
  samples, _ = source.read('00000')
  assert samples[1].captions == [fx.caption(1)]      # from .txt
  assert samples[0].captions == [fx.caption(0)]      # from .json "caption"


def test_webdataset_build_reports_every_skip_and_trains(shards, tmp_path):
  folder, expected = shards
  builder = builders.WebdatasetShards(shards=[f'{folder}/*.tar'], regions=fx.RandomRegions(),
                                      data_dir=str(tmp_path / 'tfds'), max_error_fraction=0.5)
  builder.download_and_prepare()
  report = builder.problems('train')
  assert {(p['shard'], p['key']): p['kind'] for p in report['problems']} == expected['bad']
  assert report['by_kind'] == {'missing_caption': 1, 'missing_image': 1, 'bad_caption': 1,
                               'image_unreadable': 1, 'truncated_shard': 1}
  assert report['by_shard'] == {'00000': 4, '00003': 1}
  assert report['records'] == len(expected['good']) == 13
  ids = [r['image_id'] for r in layout.decoded_records(builder.data_dir, 'train')]
  assert ids == expected['good']

  pre = tmp_path / 'pre'
  layout.link_pretraining(builder.data_dir, str(pre), ['train'],
                          tokenizer=fx.write_vocab(tmp_path / 'vocab.txt'))
  tokenizer, concept_vocab = storage.load_vocabularies(str(pre))
  it = pretraining.create_pretraining_iterator(
      str(pre), 'train', tokenizer=tokenizer, concept_vocab=concept_vocab,
      lengths=pretraining.Lengths(max_seq_length=12, max_phrases=3, max_tag_length=6,
                                  max_img_seq_length=6),
      batch_size=4, seed=1, shuffle=True, repeat=False, corrupt=True, process_index=0,
      process_count=1)
  batches = list(it)
  assert len(batches) == 3
  assert sorted(np.concatenate([b['example_index'] for b in batches]).tolist()) != list(range(12))
  assert (np.concatenate([b['mlm_labels_a'] for b in batches]) >= 0).any()


def test_too_many_broken_samples_fail_the_build(shards, tmp_path):
  folder, _ = shards
  builder = builders.WebdatasetShards(shards=[f'{folder}/00000.tar', f'{folder}/00003.tar'],
                                      regions=fx.RandomRegions(), data_dir=str(tmp_path))
  with pytest.raises(builders.SourceBuildError, match=r'missing_caption.: 1'):
    builder.download_and_prepare()


@pytest.fixture(scope='module')
def siglip_checkpoint(tmp_path_factory):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  return fx.tiny_siglip(tmp_path_factory.mktemp('siglip'))


def test_siglip_extraction_is_sharded_and_resumable(shards, siglip_checkpoint, tmp_path):
  folder, expected = shards
  source = webdataset.WebdatasetSource([f'{folder}/*.tar'])
  featurizer = regions_lib.SiglipRegions(str(siglip_checkpoint), grid=2, batch_size=8,
                                         labels_file=str(siglip_checkpoint / 'labels.txt'),
                                         top_t=2, tag_threshold=0.0)
  out = tmp_path / 'features'
  logs = []
  host1 = extract.extract_shards(source, featurizer, str(out), process_index=1, process_count=2,
                                 log=logs.append)
  assert host1['shards_done'] == 2 and regions_lib.shard_done(str(out), '00001')
  assert not regions_lib.shard_done(str(out), '00000')
  host0 = extract.extract_shards(source, featurizer, str(out), process_index=0, process_count=2)
  assert host0['shards_done'] == 2
  again = extract.extract_shards(source, featurizer, str(out), process_index=0, process_count=1)
  assert again['shards_done'] == 0                     # every shard finished: nothing redone
  given = regions_lib.GivenRegions(str(out))
  assert given.feature_dim == 16 + 6
  found, problems = given('00000', source.read('00000')[0])
  assert [(p.key, p.kind) for p in problems] == [('000009003', 'image_unreadable')]
  assert found['000000000'].features.shape == (5, 22)  # 2 x 2 grid + the whole image
  assert all(t in fx_labels(siglip_checkpoint) for t in found['000000000'].tags)
  other = regions_lib.SiglipRegions(str(siglip_checkpoint), grid=3, batch_size=8, tags=False)
  with pytest.raises(extract.ExtractError, match='other settings'):
    extract.extract_shards(source, other, str(out), process_index=0, process_count=1)
  builder = builders.WebdatasetShards(shards=[f'{folder}/*.tar'], regions=given,
                                      data_dir=str(tmp_path / 'tfds'), max_error_fraction=0.5)
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == len(expected['good'])


def fx_labels(checkpoint):
  return set((checkpoint / 'labels.txt').read_text().split('\n')) | {''}
