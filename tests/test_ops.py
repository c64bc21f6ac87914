"""Tests of input_pipeline.ops: op strings parse, compose and choose the layout (issue 9 item 5)."""

import numpy as np
import pytest

from input_pipeline import ops
from input_pipeline import pretraining
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import iterators as task_iterators

import test_task_data as task_data


def test_parse_names_arguments_and_errors():
  assert ops.parse("unique_tags|assemble(tags='tags')|corrupt(0.3)") == [
      ('unique_tags', (), {}), ('assemble', (), {'tags': 'tags'}), ('corrupt', (0.3,), {})]
  with pytest.raises(ValueError, match="unknown op 'shuffle'"):
    ops.parse('assemble|shuffle')
  with pytest.raises(ValueError, match='empty op'):
    ops.parse('assemble||no_corrupt')
  with pytest.raises(ValueError, match='cannot parse op'):
    ops.parse('corrupt(p=)')


def test_presets_are_the_documented_strings():
  assert pretraining.default_preprocess(True) == ops.PRESETS['pretrain']
  assert pretraining.default_preprocess(False) == ops.PRESETS['clean']
  for spec in ops.PRESETS.values():
    ops.parse(spec)  # every preset is a valid string


@pytest.fixture(scope='module')
def ve_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('ve'))
  task_data._write_vocab(directory)
  examples_lib.write_task_split(directory, 'train', task='ve', records=task_data._records(),
                                examples=task_data._examples('ve'))
  return directory


def _batch(directory, preprocess, batch_keys=()):
  it = task_iterators.create_task_iterator(
      directory, 've', 'train', lengths=task_data.LENGTHS, batch_size=12, seed=0, shuffle=False,
      repeat=False, pad_final_batch=False, process_index=0, process_count=1,
      preprocess=preprocess, batch_keys=batch_keys)
  return next(iter(it))


def test_the_caller_chooses_layout_and_keys_not_the_task_name(ve_dir):
  clean = _batch(ve_dir, ops.PRESETS['retrieval'])
  assert 'label' not in clean  # the pipeline adds no key because the dataset is a 've' one
  labelled = _batch(ve_dir, ops.PRESETS['ve'], ('label',))
  np.testing.assert_array_equal(labelled['label'], [(i + k) % 3 for i in range(4)
                                                    for k in range(3)])
  no_phrases = _batch(ve_dir, 'drop_phrases|unique_tags|assemble|no_corrupt')
  # Examples carry two known phrases ('ball red' is a concept, 'dog' too): dropped, none left.
  assert (clean['phrase_index'][:, 1] - clean['phrase_index'][:, 0] == 2).all()
  assert (no_phrases['phrase_index'][:, 1] == no_phrases['phrase_index'][:, 0]).all()
  all_tags = _batch(ve_dir, "assemble(tags='tags')|no_corrupt")
  # Image 0 has tags dog, tree: the same either way; image 2 repeats 'dog' (4 tags -> 3 unique).
  row = 2 * 3
  assert all_tags['attention_mask_b'][row, :5].sum() == 5  # [CLS] + 4 tag pieces capped at T
  assert clean['attention_mask_b'][row, :5].sum() == 5  # [CLS] dog tree man [SEP]
  assert not np.array_equal(all_tags['input_ids_b'][row], clean['input_ids_b'][row])
  corrupted = _batch(ve_dir, 'unique_tags|assemble|corrupt(1.0)')
  assert (corrupted['mlm_labels_a'] >= 0).any() and (clean['mlm_labels_a'] == -1).all()


def test_a_missing_batch_key_or_input_is_a_clear_error(ve_dir):
  with pytest.raises(ValueError, match=r"produced no \['region_iou'\]"):
    _batch(ve_dir, ops.PRESETS['ve'], ('region_iou',))
  with pytest.raises(ValueError, match="op 'assemble' needs key 'visual_tags'"):
    _batch(ve_dir, 'assemble|no_corrupt')
