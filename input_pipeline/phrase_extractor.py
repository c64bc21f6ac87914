"""Rule-based SPICE-style phrase tuples for new captions (no parser, no model, no network).

`extract_phrases("a man riding a brown horse")` ->
  [('man',), ('horse',), ('horse', 'brown'), ('man', 'ride', 'horse')]

The heuristics, in order of application on the lower-cased tokens of each clause (clauses end at
'.', ';', ':', '!', '?'):
- Relation words: multi-word prepositions first ("to the left of" -> 'left of', "next to", "in
  front of", ...), then single prepositions ('on', 'above', 'with', ...). A relation links the
  noun phrase before it to the next one; a clause that *starts* with one ("above a square there
  is a circle") links the next-but-one noun phrase to the first.
- Verbs: '-ing' words (except a list of '-ing' nouns), and '-s' / '-ed' forms of a list of common
  caption verbs. They are lemmatised ('riding' -> 'ride', 'sits' -> 'sit'); a verb directly
  followed by a preposition forms one relation ('sit on').
- Noun phrases: a run of content words after a determiner, numeral or adjective, or any other run
  of content words. The head is the run's last word, singularised ('dogs' -> 'dog', 'crosses' ->
  'cross', 'men' -> 'man'); the known adjectives before it (colours, sizes, numbers, a small
  list of common adjectives) become (head, adjective) tuples. Unknown modifiers (compound nouns
  such as 'tennis' in 'tennis racket') are dropped.
- Predicates: "X is red" gives (X, 'red') when the word after a copula is a known adjective.
Tuples are returned in order of discovery without duplicates: objects and attributes of a noun
phrase as it closes, relations when their object closes.
"""

import json
import re
import sys
from typing import Optional, Sequence

from absl import flags

from input_pipeline import cli
from input_pipeline.shapesworld import generate

DETERMINERS = frozenset('a an the this that these those some another each every his her its '
                        'their my your our several many few both all any no'.split())
NUMBERS = frozenset('one two three four five six seven eight nine ten eleven twelve'.split())
COLOURS = frozenset('red green blue yellow purple orange cyan white black brown gray grey pink '
                    'silver golden gold tan beige dark bright colorful'.split())
SIZES = frozenset('small large big little tiny huge tall short long giant massive'.split())
ADJECTIVES = frozenset(
    'old young new empty full open closed wet dry clean dirty busy crowded sunny cloudy snowy '
    'grassy sandy cute pretty beautiful happy smiling striped fresh hot cold stuffed sliced '
    'round wooden plastic metallic electric elderly adult male female several various '
    'different other same modern ancient shiny fluffy furry wild lush leafy rocky calm '
    'busy heavy soft hard sharp flat thin thick wide narrow high low single double '
    'middle front back top bottom outdoor indoor'.split())
ATTRIBUTES = COLOURS | SIZES | ADJECTIVES | NUMBERS
AUXILIARIES = frozenset("is are was were be been being am 's do does did can will".split())
CONJUNCTIONS = frozenset('and or but while as who which whom whose where when then'.split())
PREPOSITIONS = frozenset(
    'on in at near by beside besides behind under over above below with inside across along '
    'through between against into onto around toward towards underneath beneath atop outside '
    'from for of to down up past among like without within off upon'.split())
# Multi-word relations (longest first after sorting), mapped to their canonical lemma.
MULTIWORD_RELATIONS = {
    'to the left of': 'left of', 'on the left of': 'left of', 'left of': 'left of',
    'to the right of': 'right of', 'on the right of': 'right of', 'right of': 'right of',
    'in front of': 'in front of', 'on top of': 'on top of', 'next to': 'next to',
    'close to': 'close to', 'in the middle of': 'in middle of', 'on the side of': 'on side of',
    'out of': 'out of', 'away from': 'away from', 'in between': 'between',
    'on the edge of': 'on edge of', 'at the top of': 'at top of',
    'at the bottom of': 'at bottom of',
}
_MULTIWORD = sorted(((tuple(k.split()), v) for k, v in MULTIWORD_RELATIONS.items()),
                    key=lambda kv: -len(kv[0]))
VERBS = frozenset(
    'sit stand ride hold eat play walk fly lie look carry wear watch throw catch hit cut drive '
    'park jump run swim surf ski skate graze hang lean rest sleep read talk use wait cook drink '
    'pull push kick chase show contain have cover fill face feature overlook surround touch lay '
    'float swing climb sell serve wash brush drag feed fill hug kiss pet top line'.split())
ING_NOUNS = frozenset(
    'building ceiling clothing painting sibling evening morning thing something nothing king '
    'ring string wing swing spring icing pudding wedding railing frosting topping stuffing '
    'lighting bedding carving ping boarding skiing surfing parking dining living'.split())
IRREGULAR_NOUNS = {'men': 'man', 'women': 'woman', 'children': 'child', 'feet': 'foot',
                   'teeth': 'tooth', 'mice': 'mouse', 'geese': 'goose', 'leaves': 'leaf',
                   'knives': 'knife', 'shelves': 'shelf', 'wolves': 'wolf', 'halves': 'half',
                   'scarves': 'scarf', 'people': 'people', 'sheep': 'sheep', 'fish': 'fish'}
IRREGULAR_VERBS = {'has': 'have', 'lying': 'lie', 'tying': 'tie', 'dying': 'die',
                   'using': 'use', 'having': 'have', 'goes': 'go', 'does': 'do'}
_BOUNDARIES = frozenset('. ; : ! ?'.split())
_TOKEN = re.compile(r"[a-z0-9]+|'s|[^\sa-z0-9]")


def singular(word: str) -> str:
  """Lemma of a (possibly plural) noun."""
  if word in IRREGULAR_NOUNS:
    return IRREGULAR_NOUNS[word]
  if len(word) > 4 and word.endswith('ies'):
    return word[:-3] + 'y'
  if word.endswith(('sses', 'shes', 'ches', 'xes', 'zzes')):
    return word[:-2]
  if len(word) > 3 and word.endswith('s') and not word.endswith(('ss', 'us', 'is')):
    return word[:-1]
  return word


def _restore_e(stem: str) -> str:
  """'rid' -> 'ride', 'sitt' -> 'sit': undoes the spelling changes of -ing / -ed."""
  if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in 'lsz':
    return stem[:-1]
  groups = re.findall(r'[aeiou]+', stem)
  if len(groups) == 1 and re.search(r'[^aeiou][aeiou][^aeiouwxy]$', stem):
    return stem + 'e'
  return stem


def verb_lemma(word: str) -> Optional[str]:
  """Lemma of a verb form ('riding', 'sits', 'parked'), or None when `word` is not one."""
  if word in IRREGULAR_VERBS:
    return IRREGULAR_VERBS[word]
  if len(word) > 4 and word.endswith('ing') and word not in ING_NOUNS:
    stem = word[:-3]
    return stem if stem.endswith('y') or stem in VERBS else _restore_e(stem)
  if word.endswith('s') and not word.endswith('ss'):
    stem = word[:-2] if word.endswith(('ches', 'shes', 'sses', 'xes')) else word[:-1]
    if word.endswith('ies'):
      stem = word[:-3] + 'y'
    return stem if stem in VERBS else None
  if len(word) > 3 and word.endswith('ed'):
    for stem in (word[:-2], word[:-1], _restore_e(word[:-2]), word[:-3] + 'y'):
      if stem in VERBS:
        return stem
  return None


def tokenize(caption: str) -> list:
  return _TOKEN.findall(caption.lower())


def _is_function(word: str) -> bool:
  return (word in DETERMINERS or word in AUXILIARIES or word in CONJUNCTIONS or
          word in PREPOSITIONS or word == 'there' or not word[0].isalnum())


def _relation_at(tokens: Sequence[str], i: int) -> tuple:
  """(canonical relation, tokens used) of a relation starting at i, or (None, 0)."""
  for words, lemma in _MULTIWORD:
    if tuple(tokens[i:i + len(words)]) == words:
      return lemma, len(words)
  if tokens[i] in PREPOSITIONS:
    return tokens[i], 1
  return None, 0


class _Clause:
  """Parser state within one clause."""

  def __init__(self):
    self.subject = None  # head of the clause's first noun phrase
    self.last = None  # head of the latest noun phrase
    self.pending = None  # (subject, relation) waiting for its object
    self.fronted = None  # (relation, object) of a clause-initial prepositional phrase
    self.fronting = False  # the clause started with a relation whose object is not parsed yet
    self.copula = False
    self.verb_pending = False  # `pending` holds a verb that may still take a preposition


def extract_phrases(caption: str) -> list:
  """SPICE-style tuples [(obj,), (obj, attr), (subj, rel, obj)] of `caption` (see module doc)."""
  tokens = tokenize(caption)
  out = []

  def add(t):
    if t not in out:
      out.append(t)

  state = _Clause()
  i = 0
  while i < len(tokens):
    word = tokens[i]
    if word in _BOUNDARIES:
      state, i = _Clause(), i + 1
      continue
    if word == ',':
      state.pending, state.copula, state.verb_pending, i = None, False, False, i + 1
      continue
    rel, used = _relation_at(tokens, i)
    if rel is not None:
      if state.verb_pending:  # 'sit' + 'on' -> 'sit on'
        state.pending = (state.pending[0], state.pending[1] + ' ' + rel)
      elif state.last is None:
        state.fronting, state.pending = True, (None, rel)
      else:
        state.pending = (state.last, rel)
      state.copula, state.verb_pending, i = False, False, i + used
      continue
    if word in AUXILIARIES:
      state.copula, i = True, i + 1
      continue
    if _is_function(word) and word not in DETERMINERS:
      i += 1
      continue
    lemma = verb_lemma(word) if word not in ATTRIBUTES else None
    after_noun = state.last is not None and (i == 0 or not _is_function(tokens[i - 1]) or
                                             tokens[i - 1] in AUXILIARIES)
    if lemma is not None and (word.endswith('ing') or after_noun):
      subject = state.last if state.last is not None else state.subject
      state.pending, state.copula, i = (subject, lemma), False, i + 1
      state.verb_pending = True
      continue
    # A noun phrase: determiners, then content words up to the next function word or verb.
    j = i
    while j < len(tokens) and tokens[j] in DETERMINERS:
      j += 1
    words = []
    while j < len(tokens) and not _is_function(tokens[j]) and _relation_at(tokens, j)[0] is None:
      if words and words[-1] not in ATTRIBUTES and verb_lemma(tokens[j]) and (
          tokens[j] not in ATTRIBUTES):
        break  # "a man rides ..."
      words.append(tokens[j])
      j += 1
    i = max(j, i + 1)
    if not words:
      continue
    if all(w in ATTRIBUTES for w in words) and (state.copula or words[-1] not in COLOURS):
      if state.copula and state.last is not None:  # "the circle is red"
        for w in words:
          add((state.last, w))
      state.copula = False
      continue
    head = singular(words[-1])
    add((head,))
    for w in words[:-1]:
      if w in ATTRIBUTES:
        add((head, w))
    state.verb_pending = False
    if state.pending is not None:
      subject, rel = state.pending
      if state.fronting and subject is None:
        state.fronted, state.fronting = (rel, head), False
      elif subject is not None:
        add((subject, rel, head))
      state.pending = None
    elif state.fronted is not None:
      add((head, state.fronted[0], state.fronted[1]))
      state.fronted = None
    if state.subject is None:
      state.subject = head
    state.last, state.copula = head, False
  return out


def precision_recall(predicted: Sequence, gold: Sequence) -> tuple:
  """Micro precision and recall of tuple sets.

  Args:
    predicted, gold: parallel lists with one list of tuples per caption (or, for one caption,
      the two lists of tuples themselves).
  Returns:
    (precision, recall); 1.0 when there is nothing to predict / recall.
  """
  if predicted and isinstance(predicted[0], tuple) or gold and isinstance(gold[0], tuple):
    predicted, gold = [predicted], [gold]
  if len(predicted) != len(gold):
    raise ValueError(f'{len(predicted)} predictions for {len(gold)} gold captions.')
  hits = num_predicted = num_gold = 0
  for p, g in zip(predicted, gold):
    p, g = set(map(tuple, p)), set(map(tuple, g))
    hits += len(p & g)
    num_predicted += len(p)
    num_gold += len(g)
  return (hits / num_predicted if num_predicted else 1.0, hits / num_gold if num_gold else 1.0)


def evaluate_on_shapesworld(num_captions: int = 2000, seed: int = 0) -> dict:
  """Micro precision / recall against the gold tuples of `num_captions` ShapesWorld train
  captions (all captions of the first images)."""
  config = generate.ShapesWorldConfig(seed=seed, feature_dim=16)
  predicted, gold = [], []
  for record in generate.generate_records(config, 'train', num_captions):
    for caption, caption_tuples in zip(record['captions'], record['phrases']):
      predicted.append(extract_phrases(caption))
      gold.append(caption_tuples)
    if len(gold) >= num_captions:
      break
  predicted, gold = predicted[:num_captions], gold[:num_captions]
  precision, recall = precision_recall(predicted, gold)
  return {'captions': len(gold), 'precision': precision, 'recall': recall}


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_multi_string('text', None, 'a caption to extract phrases from (repeatable)',
                            flag_values=v)
  flags.DEFINE_string('input', None, 'a file of captions, one a line', flag_values=v)
  flags.DEFINE_bool('evaluate', False, 'measure precision / recall on ShapesWorld captions',
                    flag_values=v)
  flags.DEFINE_integer('num_captions', 2000, 'captions of the evaluation', flag_values=v)
  flags.DEFINE_integer('seed', 0, 'ShapesWorld seed of the evaluation', flag_values=v)


def _run(a: flags.FlagValues) -> int:
  """Prints one JSON line {"text", "phrases"} per caption, and/or the evaluation."""
  texts = list(a.text or [])
  if a.input:
    with open(a.input, encoding='utf-8') as f:
      texts += [line.strip() for line in f if line.strip()]
  if not texts and not a.evaluate:
    print('nothing to do: give --text, --input or --evaluate', file=sys.stderr)
    return 2
  for text in texts:
    print(json.dumps({'text': text, 'phrases': [list(p) for p in extract_phrases(text)]}))
  if a.evaluate:
    print(json.dumps(evaluate_on_shapesworld(a.num_captions, a.seed)))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """python -m input_pipeline.phrase_extractor --text="a man riding a brown horse" """
  return cli.run('python -m input_pipeline.phrase_extractor', argv, _define, _run,
                 what='phrase extraction')


if __name__ == '__main__':
  sys.exit(main())
