"""Tests of the rule-based phrase-tuple extractor.

  python -m pytest tests/test_phrase_extractor.py -q
"""

import pytest

from input_pipeline import phrase_extractor

CASES = {
    'a man riding a brown horse':
        {('man',), ('horse',), ('horse', 'brown'), ('man', 'ride', 'horse')},
    'A small red circle to the left of a blue square.':
        {('circle',), ('circle', 'small'), ('circle', 'red'), ('square',), ('square', 'blue'),
         ('circle', 'left of', 'square')},
    'there is a large green triangle above a yellow star':
        {('triangle',), ('triangle', 'large'), ('triangle', 'green'), ('star',),
         ('star', 'yellow'), ('triangle', 'above', 'star')},
    'two shapes: a red circle and a blue square':
        {('shape',), ('shape', 'two'), ('circle',), ('circle', 'red'), ('square',),
         ('square', 'blue')},
    'the cross is red': {('cross',), ('cross', 'red')},
    'right of a blue star there is a small diamond':
        {('star',), ('star', 'blue'), ('diamond',), ('diamond', 'small'),
         ('diamond', 'right of', 'star')},
    'a man sitting on a wooden bench':
        {('man',), ('bench',), ('bench', 'wooden'), ('man', 'sit on', 'bench')},
    'a woman is holding an umbrella': {('woman',), ('umbrella',), ('woman', 'hold', 'umbrella')},
    'two dogs playing with a frisbee':
        {('dog',), ('dog', 'two'), ('frisbee',), ('dog', 'play with', 'frisbee')},
    'A cat sits on a table next to a vase.':
        {('cat',), ('table',), ('vase',), ('cat', 'sit on', 'table'),
         ('table', 'next to', 'vase')},
    'three men in front of crosses':
        {('man',), ('man', 'three'), ('cross',), ('man', 'in front of', 'cross')},
    'an orange on a plate': {('orange',), ('plate',), ('orange', 'on', 'plate')},
    'a car parked on the street': {('car',), ('street',), ('car', 'park on', 'street')},
}


@pytest.mark.parametrize('caption', sorted(CASES))
def test_hand_written_captions(caption):
  predicted = phrase_extractor.extract_phrases(caption)
  assert len(predicted) == len(set(predicted))
  assert set(predicted) == CASES[caption]


def test_clauses_do_not_leak_relations():
  tuples = phrase_extractor.extract_phrases('a red circle. above a square there is a star')
  assert ('circle', 'above', 'square') not in tuples
  assert ('star', 'above', 'square') in tuples


@pytest.mark.parametrize('word, lemma', [
    ('dogs', 'dog'), ('crosses', 'cross'), ('benches', 'bench'), ('ponies', 'pony'),
    ('men', 'man'), ('glass', 'glass'), ('bus', 'bus'), ('shapes', 'shape')])
def test_singular(word, lemma):
  assert phrase_extractor.singular(word) == lemma


@pytest.mark.parametrize('word, lemma', [
    ('riding', 'ride'), ('sitting', 'sit'), ('holding', 'hold'), ('lying', 'lie'),
    ('grazing', 'graze'), ('playing', 'play'), ('rolling', 'roll'), ('eats', 'eat'),
    ('watches', 'watch'), ('flies', 'fly'), ('parked', 'park'), ('building', None),
    ('dogs', None)])
def test_verb_lemma(word, lemma):
  assert phrase_extractor.verb_lemma(word) == lemma


def test_precision_recall():
  predicted = [[('a',), ('b',), ('a', 'red')], []]
  gold = [[('a',), ('a', 'blue')], [('c',)]]
  assert phrase_extractor.precision_recall(predicted, gold) == (1 / 3, 1 / 3)
  assert phrase_extractor.precision_recall([('a',)], [('a',), ('b',)]) == (1.0, 0.5)
  assert phrase_extractor.precision_recall([], []) == (1.0, 1.0)
  with pytest.raises(ValueError):
    phrase_extractor.precision_recall([[('a',)]], [])


def test_agrees_with_shapesworld_gold():
  result = phrase_extractor.evaluate_on_shapesworld(num_captions=300)
  assert result['captions'] == 300
  assert result['precision'] > 0.97 and result['recall'] > 0.97
