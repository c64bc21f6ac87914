"""Tests of input_pipeline.concepts (spec §5.3)."""

import json

import pytest
import tensorflow as tf

from input_pipeline import concepts
from input_pipeline import tokenizers
from input_pipeline import train_vocab

# Entries in the exact format (and order) of the authors' id2phrase_new.json.
AUTHORS_SAMPLE = ('{"30522": ["boat", "two"], "30526": ["pier", "with", "boat"], '
                  '"2158": ["man"], "3899": ["dog"], "999": ["!"], "80008": ["giraffe"], '
                  '"80009": ["skateboard"], "41000": ["man", "fill with", "water"]}')


def test_authors_format_loads_unchanged_and_round_trips(tmp_path):
  (tmp_path / 'id2phrase.json').write_text(AUTHORS_SAMPLE)
  vocab = concepts.ConceptVocab.load(str(tmp_path / 'id2phrase.json'), word_vocab_size=30522)
  assert vocab.phrase2id[('boat', 'two')] == 30522
  assert vocab.phrase2id[('man',)] == 2158
  assert vocab.phrase2id[('man', 'fill with', 'water')] == 41000
  assert vocab.id2phrase[80009] == ('skateboard',)
  assert vocab.num_rows == 80010
  assert vocab.num_new == 5
  assert vocab.ids([('dog',), ('unicorn',), ('pier', 'with', 'boat'), ['man']]) == [3899, 30526,
                                                                                    2158]
  vocab.save(str(tmp_path / 'again.json'))
  saved = (tmp_path / 'again.json').read_text()
  assert json.loads(saved) == json.loads(AUTHORS_SAMPLE)
  assert list(json.loads(saved)) == list(json.loads(AUTHORS_SAMPLE))  # Same key order.


def test_build_counts_sentences_reuses_word_ids_and_orders_new_ids(tmp_path):
  train_vocab.write_vocab(['man', 'dog', 'horse', 'ride'], str(tmp_path / 'vocab.txt'))
  tok = tokenizers.load_tokenizer(str(tmp_path / 'vocab.txt'))
  sentences = [
      [('man',), ('man',), ('man', 'ride', 'horse'), ('zebra',)],  # ('man',) counts once here.
      [('man', 'ride', 'horse'), ('dog', 'brown'), ('zebra',)],
      [('zebra',), ('dog', 'brown'), ('cat',)],
      [('man',)],
  ]
  vocab = concepts.ConceptVocab.build(sentences, tok, min_count=2)
  v = tok.vocab_size
  # zebra: 3 sentences; (dog, brown) and (man, ride, horse): 2 each, tie broken by the tuple.
  assert vocab.id2phrase == {tok.token_to_id('man'): ('man',), v: ('zebra',),
                             v + 1: ('dog', 'brown'), v + 2: ('man', 'ride', 'horse')}
  assert vocab.num_rows == v + 3 and vocab.num_new == 3


def test_lookup_table_in_graph(tmp_path):
  (tmp_path / 'id2phrase.json').write_text(AUTHORS_SAMPLE)
  vocab = concepts.ConceptVocab.load(str(tmp_path / 'id2phrase.json'), word_vocab_size=30522)
  table = vocab.lookup_table()
  phrases = tf.ragged.constant([['man', 'fill with', 'water'], ['dog'], ['dog', 'fill']])
  ds = tf.data.Dataset.from_tensors(phrases).map(
      lambda p: table.lookup(concepts.join_phrases(p)))
  assert next(ds.as_numpy_iterator()).tolist() == [41000, 3899, -1]


def test_bad_files_fail_clearly(tmp_path):
  (tmp_path / 'dup.json').write_text('{"30522": ["boat"], "30523": ["boat"]}')
  with pytest.raises(ValueError, match=r'dup.json: phrase \[\'boat\'\] has two rows'):
    concepts.ConceptVocab.load(str(tmp_path / 'dup.json'), 30522)
  (tmp_path / 'list.json').write_text('[["boat"]]')
  with pytest.raises(ValueError, match='list.json: expected a JSON object'):
    concepts.ConceptVocab.load(str(tmp_path / 'list.json'), 30522)
  (tmp_path / 'key.json').write_text('{"boat": ["boat"]}')
  with pytest.raises(ValueError, match='key.json: entries'):
    concepts.ConceptVocab.load(str(tmp_path / 'key.json'), 30522)
