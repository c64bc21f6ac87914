"""Tests of mvp_jax.data and dataset ownership (issue 10 items 1, 7, 10, 17; CONTRACTS.md)."""

import hashlib
import os

import ml_collections
import numpy as np
import pytest

from input_pipeline import concepts
from input_pipeline import ownership
from input_pipeline import storage
from input_pipeline import train_vocab
from input_pipeline.shapesworld import build
from input_pipeline.tasks import examples as examples_lib
from mvp_jax import data

import test_task_data as task_data

WORDS = [f'word{i}' for i in range(40)] + ['a', 'dog', 'red', 'ball']


def _snapshot(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _records(num_images, num_regions, dim=8):
  rng = np.random.default_rng(0)
  for i in range(num_images):
    yield {'image_id': str(i), 'image_png': b'', 'image_size': np.array([10, 10], np.int32),
           'region_features': rng.random((num_regions, dim), dtype=np.float32),
           'boxes': np.zeros((num_regions, 4), np.float32), 'tags': ['dog'] * num_regions,
           'captions': ['a red ball', 'a dog'], 'phrases': [[('dog',)], [('dog',)]],
           'phrase_regions': [[0], [-1]]}


def _vinvl_like_import(directory, num_regions=5):
  """An imported records dataset: 44-word vocab.txt, id2phrase.json, metadata source 'vinvl'."""
  os.makedirs(directory)
  train_vocab.write_vocab(WORDS, os.path.join(directory, 'vocab.txt'))
  storage.write_dataset(_records(4, num_regions), directory, 'train',
                        metadata={'source': 'vinvl'})
  concept_vocab = concepts.ConceptVocab({len(WORDS) + 5: ('dog',)}, word_vocab_size=49)
  concept_vocab.save(os.path.join(directory, storage.CONCEPTS_FILE))


def _config(directory, **overrides):
  values = dict(kind='shapesworld', directory=directory, max_seq_length=12, max_phrases=4,
                max_tag_length=8, max_img_seq_length=8, mask_prob=0.15,
                shapesworld=dict(num_train_images=6, num_val_images=2, feature_dim=16))
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def test_shapesworld_never_writes_into_an_imported_dataset(tmp_path):
  directory = str(tmp_path / 'coco_vinvl')
  _vinvl_like_import(directory)
  before = _snapshot(directory)
  with pytest.raises(ownership.NotOwnedError, match="written by 'vinvl'"):
    build.build_dataset(directory, build.BuildConfig())
  assert _snapshot(directory) == before
  # The trainer's data.kind default ('shapesworld') no longer decides: the folder is a dataset.
  assert data.prepare_dataset(_config(directory), str(tmp_path)) == directory
  assert _snapshot(directory) == before
  assert data.vocab_sizes(directory) == (49, 50)  # the import's 44 words + 5 specials
  assert data.dataset_kind(directory) == 'records'


def test_shapesworld_refuses_a_folder_of_foreign_files_and_reuses_its_own(tmp_path):
  foreign = tmp_path / 'notes'
  foreign.mkdir()
  (foreign / 'vocab.txt').write_text('mine\n')
  before = _snapshot(str(foreign))
  with pytest.raises(ownership.NotOwnedError, match='files of no mvp-jax builder'):
    data.prepare_dataset(_config(str(foreign)), str(tmp_path))
  assert _snapshot(str(foreign)) == before
  own = str(tmp_path / 'sw')
  config = _config(own)
  assert data.prepare_dataset(config, str(tmp_path)) == own
  first = _snapshot(own)
  assert data.prepare_dataset(config, str(tmp_path)) == own and _snapshot(own) == first
  assert ownership.owner(own) == 'shapesworld' and data.dataset_kind(own) == 'shapesworld'
  with pytest.raises(ValueError, match='holds ShapesWorld built with'):
    data.prepare_dataset(_config(own, shapesworld=dict(num_train_images=7)), str(tmp_path))


def test_records_kind_without_a_dataset_names_the_importer(tmp_path):
  with pytest.raises(FileNotFoundError, match='input_pipeline.import_vinvl'):
    data.prepare_dataset(_config(str(tmp_path / 'none'), kind='records'), str(tmp_path))


def test_check_splits_names_missing_splits_and_dropped_regions(tmp_path):
  directory = str(tmp_path / 'imported')
  _vinvl_like_import(directory, num_regions=17)  # a 4x4 grid plus the whole image
  with pytest.raises(data.DataError) as error:
    data.check_splits(_config(directory, max_img_seq_length=7), directory, ['train', 'val'])
  message = str(error.value)
  assert "split 'val' is missing" in message
  assert ('4 of 4 images hold more than max_img_seq_length=7 regions (up to 17)' in message
          and '--config.data.max_img_seq_length=17' in message)
  data.check_splits(_config(directory, max_img_seq_length=17), directory, ['train'])
  data.check_splits(_config(directory, max_img_seq_length=7, truncate_regions=True),
                    directory, ['train'])
  # A split written before regions_per_image.npy existed is counted from its records.
  os.remove(os.path.join(directory, 'train', storage.REGIONS_FILE))
  with pytest.raises(data.DataError, match='up to 17'):
    data.check_splits(_config(directory, max_img_seq_length=7), directory, ['train'])


def test_create_iterator_pretraining_clean_and_corrupt(tmp_path):
  directory = str(tmp_path / 'imported')
  _vinvl_like_import(directory)
  config = _config(directory, kind='records')
  corrupt = data.create_iterator(config, directory, 'train', per_host_batch_size=8, seed=0,
                                 train=False, corrupt=True)
  clean = data.create_iterator(config, directory, 'train', per_host_batch_size=8, seed=0,
                               train=False, corrupt=False)
  corrupt, clean = next(iter(corrupt)), next(iter(clean))
  assert (clean['mlm_labels_a'] == -1).all() and (clean['mlm_labels_b'] == -1).all()
  assert (corrupt['mlm_labels_a'] >= 0).any()
  assert not np.array_equal(corrupt['input_ids_a'], clean['input_ids_a'])
  np.testing.assert_array_equal(clean['img_feats'], corrupt['img_feats'])


def test_create_iterator_tasks_use_the_documented_pipelines(tmp_path):
  directory = str(tmp_path / 'vqa')
  os.makedirs(directory)
  task_data._write_vocab(directory)
  examples_lib.write_answers(directory, ['yes', 'no', 'red', 'two'])
  examples_lib.write_task_split(directory, 'train', task='vqa', records=task_data._records(),
                                examples=task_data._examples('vqa'))
  config = _config(directory, kind='records', max_seq_length=8, max_phrases=2,
                   max_tag_length=5, max_img_seq_length=4)
  assert data.prepare_dataset(config, str(tmp_path), task='vqa') == directory
  assert data.task_info(directory).num_answers == 4
  batch = next(iter(data.create_iterator(config, directory, 'train', task='vqa',
                                         per_host_batch_size=12, seed=0, train=False)))
  assert set(batch) >= {'answer_targets', 'question_id'}
  np.testing.assert_allclose(batch['answer_targets'][0], [0.3, 0.0, 1.0, 0.0])
  data.check_splits(config, directory, ['train'])
  with pytest.raises(data.DataError, match="split 'val' is missing or incomplete"):
    data.check_splits(config, directory, ['train', 'val'])
