"""Tests of input_pipeline.pretraining and input_pipeline.iterators: batches, sharding, resume."""

import json

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import concepts
from input_pipeline import features
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline import train_vocab

WORDS = ['a', 'dog', 'man', 'red', 'ball', 'on', 'grass', 'runs', 'with', 'big', 'tree']
LENGTHS = pretraining.Lengths(max_seq_length=8, max_phrases=2, max_tag_length=5,
                              max_img_seq_length=4)
NUM_IMAGES = 9  # Captions per image cycle 1, 2, 3: 18 examples.


def _records():
  rng = np.random.default_rng(0)
  for i in range(NUM_IMAGES):
    captions = [' '.join(rng.choice(WORDS, size=3 + (i + c) % 6)) for c in range(1 + i % 3)]
    yield {
        'image_id': f'img{i}', 'image_png': b'', 'image_size': np.array([32, 32], np.int32),
        'region_features': rng.random((2 + i % 4, 10), dtype=np.float32),
        'boxes': np.zeros((2 + i % 4, 4), np.float32),
        'tags': ['dog', 'tree', 'dog', 'man', 'ball'][:2 + i % 4],
        'captions': captions, 'phrases': [[('dog',), ('ball', 'red')] for _ in captions],
        'phrase_regions': [[1, -1] for _ in captions],
    }


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('data'))
  train_vocab.write_vocab(WORDS, directory + '/words.txt')
  storage.write_dataset(_records(), directory, 'train', metadata={})
  storage.save_vocabularies(directory, directory + '/words.txt', concepts.ConceptVocab(
      {7: ('dog',), 16: ('ball', 'red')}, word_vocab_size=16))
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  captions = [c for r in _records() for c in r['captions']]
  image_of_example = [i for i, r in enumerate(_records()) for _ in r['captions']]

  def iterator(**kwargs):
    settings = dict(tokenizer=tokenizer, concept_vocab=concept_vocab, lengths=LENGTHS,
                    batch_size=4, seed=3, shuffle=True, repeat=False, corrupt=False,
                    process_index=0, process_count=1)
    return pretraining.create_pretraining_iterator(directory, 'train', **{**settings, **kwargs})

  return iterator, tokenizer, captions, image_of_example


def test_hosts_are_disjoint_covering_padded_and_hold_the_captions(data):
  iterator, tokenizer, captions, image_of_example = data
  hosts = [list(iterator(shuffle=False, process_index=h, process_count=2, pad_final_batch=True))
           for h in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 3  # ceil(ceil(18 / 2) / 4)
  la = LENGTHS.text_length
  shapes = {'input_ids_a': (4, la), 'attention_mask_b': (4, 5 + 4), 'img_feats': (4, 4, 10),
            'phrase_index': (4, 2), 'example_index': (4,)}
  seen = []
  for h, batches in enumerate(hosts):
    for batch in batches:
      assert tuple(batch) == features.BATCH_KEYS
      assert {k: batch[k].shape for k in shapes} == shapes
      assert batch['example_index'].dtype == np.int64 and batch['img_feats'].dtype == np.float32
      assert all(batch[k].dtype == np.int32 for k in features.BATCH_KEYS
                 if k not in ('example_index', 'img_feats'))
    rows = {k: np.concatenate([b[k] for b in batches]) for k in features.BATCH_KEYS}
    valid = rows['example_valid'].astype(bool)
    # Without shuffle, host h reads block h of every global batch of 8 in stored order: host 0
    # examples 0-3, 8-11, 16-17, host 1 4-7, 12-15, then padding (-1).
    want = [i if i < 18 else -1 for b in range(3) for i in range(8 * b + 4 * h, 8 * b + 4 * h + 4)]
    np.testing.assert_array_equal(rows['example_index'], want)
    mine = [i for i in want if i >= 0]
    np.testing.assert_array_equal(valid, np.asarray(want) >= 0)
    np.testing.assert_array_equal(rows['image_index'][valid], [image_of_example[i] for i in mine])
    words = tokenizer.tokenize([captions[i] for i in mine]).to_list()
    for row, want in zip(rows['input_ids_a'][valid], words):
      n = min(len(want), LENGTHS.max_seq_length - 2)
      np.testing.assert_array_equal(row[:1 + n], [tokenizer.cls_id] + want[:n])
    assert (rows['mlm_labels_a'] == -1).all()
    pad = ~valid
    assert (rows['attention_mask_a'][pad] == 0).all() and not rows['img_feats'][pad].any()
    assert (rows['phrase_region_links'][pad] == -1).all() and (rows['image_index'][pad] == -1).all()
    seen.append(set(rows['example_index'][valid].tolist()))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(18))


@pytest.mark.parametrize('num_rows, covering', [(24, False), (32, True)])
def test_host_order_is_disjoint_and_reshuffled(num_rows, covering):
  # 103 examples on 4 hosts, batch 8: drop remainder keeps (103 // 4) // 8 * 8 = 24 rows per
  # host; padding keeps ceil(ceil(103 / 4) / 8) * 8 = 32 rows, the missing ones -1.
  def order(epoch, host, count=4, rows=num_rows):
    return pretraining.host_example_order(
        tf.constant(epoch, tf.int64), num_examples=103, seed=5, shuffle=True,
        process_index=host, process_count=count, batch_size=8, num_rows=rows).numpy()

  hosts = [order(0, h) for h in range(4)]
  # Each global batch, hosts concatenated in process order, is the one host's batch of 32.
  one_host = order(0, 0, count=1, rows=4 * num_rows)
  for b in range(num_rows // 8):
    np.testing.assert_array_equal(np.concatenate([h[b * 8:(b + 1) * 8] for h in hosts]),
                                  one_host[b * 32:(b + 1) * 32])
  valid = [set(h[h >= 0].tolist()) for h in hosts]
  assert all(len(h) == num_rows for h in hosts)
  assert sum(len(v) for v in valid) == len(set().union(*valid))  # Disjoint.
  assert (set().union(*valid) == set(range(103))) == covering
  assert (order(1, 0) != hosts[0]).any() and (order(0, 0) == hosts[0]).all()


def test_resume_yields_the_uninterrupted_batches(data):
  iterator = data[0]
  it = iterator(repeat=True, corrupt=True)
  assert it.batches_per_epoch == 4
  run, states = [], []
  for _ in range(10):
    states.append(it.get_state())
    run.append(next(it))
  epochs = [np.concatenate([b['example_index'] for b in run[e * 4:e * 4 + 4]]) for e in range(2)]
  assert (epochs[0] != epochs[1]).any()  # Reshuffled every epoch ...
  assert len(set(epochs[0])) == len(set(epochs[1])) == 16  # ... without repeats inside one.
  assert states[6] == {**states[6], 'epoch': 1, 'batch_in_epoch': 2}

  resumed = iterator(repeat=True, corrupt=True)
  resumed.set_state(json.loads(json.dumps(states[3])))
  for want in run[3:10]:
    got = next(resumed)
    for key in features.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert any((b['mlm_labels_a'] >= 0).any() for b in run)

  with pytest.raises(ValueError, match=r"'seed': \(3, 4\)"):
    iterator(seed=4).set_state(states[3])


def test_batch_larger_than_host_share_fails(data):
  with pytest.raises(ValueError, match='do not fill one batch of 16'):
    data[0](batch_size=16, process_count=2)
