"""Tests of input_pipeline.storage: round trip, validation errors, atomic writes, vocabularies."""

import os

import numpy as np
import pytest

from input_pipeline import concepts
from input_pipeline import storage
from input_pipeline import train_vocab


def _record(i, num_regions=3, dim=8):
  rng = np.random.default_rng(i)
  return {
      'image_id': f'img{i}', 'image_png': b'\x89PNG' * i,
      'image_size': np.array([480, 640], np.int32),
      'region_features': rng.random((num_regions, dim), dtype=np.float32),
      'boxes': rng.random((num_regions, 4), dtype=np.float32),
      'tags': ['dog', 'man', 'tree'][:num_regions],
      'captions': [f'caption {i} a', f'caption {i} b'][:1 + i % 2],
      'phrases': [[('dog',), ('man', 'fill with', 'water')], []][:1 + i % 2],
      'phrase_regions': [[0 if num_regions else -1, -1], []][:1 + i % 2],
  }


def test_round_trip_across_shards(tmp_path):
  directory = str(tmp_path / 'data')
  records = [_record(i) for i in range(5)] + [_record(5, num_regions=0)]
  assert storage.write_dataset(iter(records), directory, 'train', metadata={'source': 'test'},
                               records_per_shard=2) == 6
  assert storage.num_images(directory, 'train') == 6
  assert storage.read_metadata(directory) == {'source': 'test', 'region_feature_dim': 8}
  assert sorted(os.listdir(directory)) == ['metadata.json', 'train']  # No temporary leftovers.
  read = list(storage.read_dataset(directory, 'train'))  # Eager tensors; ragged ones stay ragged.
  assert len(read) == 6
  for want, got in zip(records, read):
    got = {k: v if k in ('phrases', 'phrase_regions') else v.numpy() for k, v in got.items()}
    assert got['image_id'].decode() == want['image_id']
    assert got['image_png'] == want['image_png']
    np.testing.assert_array_equal(got['region_features'], want['region_features'])
    np.testing.assert_array_equal(got['boxes'], want['boxes'])
    np.testing.assert_array_equal(got['image_size'], want['image_size'])
    assert [t.decode() for t in got['tags']] == want['tags']
    assert [c.decode() for c in got['captions']] == want['captions']
    phrases = [[tuple(w.decode() for w in p) for p in cp] for cp in got['phrases'].to_list()]
    assert phrases == want['phrases']
    assert got['phrase_regions'].to_list() == want['phrase_regions']
  source = storage.RecordSource(directory, 'train')
  np.testing.assert_array_equal(source.captions_per_image, [1, 2, 1, 2, 1, 2])
  assert len(source.read(np.array([5, 0, 3]))) == 3


@pytest.mark.parametrize('change, message', [
    (lambda r: r.pop('boxes'), r"missing keys \['boxes'\]"),
    (lambda r: r.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda r: r.update(region_features=r['region_features'].astype(np.float64)),
     'region_features must be a float32'),
    (lambda r: r.update(region_features=np.zeros((3, 9), np.float32)), 'has width 9'),
    (lambda r: r['region_features'].__setitem__((1, 2), np.nan), 'NaN or Inf'),
    (lambda r: r.update(tags=['dog']), 'tags must be a list of 3 str'),
    (lambda r: r.update(boxes=np.zeros((2, 4), np.float32)), r'boxes must be float32 \[3, 4\]'),
    (lambda r: r.update(phrase_regions=[[0]]), r'phrase_regions\[0\] has 1 entries for 2'),
    (lambda r: r.update(phrase_regions=[[0, 3]]), r'ints in \[-1, 3\)'),
    (lambda r: r.update(phrases=[]), 'one entry per caption'),
    (lambda r: r.update(image_id='img0'), 'duplicate image_id'),
])
def test_validation_errors_name_the_record(tmp_path, change, message):
  bad = _record(2)
  change(bad)
  with pytest.raises(ValueError, match=message) as error:
    storage.write_dataset([_record(0), bad], str(tmp_path), 'train', metadata={})
  assert f"record 1 (image_id '{bad.get('image_id')}')" in str(error.value)
  assert os.listdir(tmp_path) == []  # Nothing that looks like a dataset is left behind.


def test_failed_write_leaves_no_split_and_existing_split_is_kept(tmp_path):
  directory = str(tmp_path)

  def records_then_crash():
    yield _record(0)
    raise RuntimeError('source died')

  with pytest.raises(RuntimeError, match='source died'):
    storage.write_dataset(records_then_crash(), directory, 'train', metadata={})
  assert os.listdir(directory) == []
  storage.write_dataset([_record(0)], directory, 'train', metadata={'source': 'a'})
  with pytest.raises(FileExistsError, match='already written'):
    storage.write_dataset([_record(1)], directory, 'train', metadata={'source': 'a'})
  with pytest.raises(ValueError, match=r"'source': \('a', 'b'\)"):
    storage.write_dataset([_record(1)], directory, 'val', metadata={'source': 'b'})
  assert sorted(os.listdir(directory)) == ['metadata.json', 'train']
  storage.write_dataset([_record(1), _record(2)], directory, 'train', metadata={'source': 'a'},
                        overwrite=True)
  assert storage.num_images(directory, 'train') == 2
  with pytest.raises(FileNotFoundError, match="no written split 'test'"):
    storage.num_images(directory, 'test')


def test_vocabularies_live_beside_the_data(tmp_path):
  train_vocab.write_vocab(['dog', 'man'], str(tmp_path / 'words.txt'))
  vocab = concepts.ConceptVocab({5: ('dog',), 7: ('dog', 'brown')}, word_vocab_size=7)
  storage.save_vocabularies(str(tmp_path / 'data'), str(tmp_path / 'words.txt'), vocab)
  tokenizer, loaded = storage.load_vocabularies(str(tmp_path / 'data'))
  assert tokenizer.vocab_size == 7 and tokenizer.token_to_id('man') == 6
  assert loaded.id2phrase == vocab.id2phrase and loaded.num_rows == 8
  os.remove(tmp_path / 'data' / 'id2phrase.json')
  with pytest.raises(FileNotFoundError, match='id2phrase.json: concept vocabulary missing'):
    storage.load_vocabularies(str(tmp_path / 'data'))
