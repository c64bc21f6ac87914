"""ShapesWorld captions with their gold SPICE-style phrase tuples and gold object links.

A caption comes from one of CAPTION_TEMPLATES. Each template mentions one to four shapes by a noun
phrase such as "small red circle" and yields, in order of mention and without duplicates:
  (kind,)                       for every shape mentioned, e.g. ('circle',)
  (kind, colour) / (kind, size) for every adjective said, e.g. ('circle', 'red'), ('circle', 'big')
  (kind_a, relation, kind_b)    for a stated relation, e.g. ('circle', 'left of', 'square')
  ('shape',), ('shape', count)  for "two shapes: ..." and "there are three shapes"
Each tuple is linked to the index of the shape it describes (the subject for a relation), or -1
for the collective 'shape' tuples. Only tuples whose words occur in the caption are produced.
"""

import bisect
import functools
import itertools
import re
from typing import Optional, Sequence

import numpy as np

from input_pipeline.shapesworld import scenes

SIZE_WORDS = {'small': ('small',), 'large': ('large', 'big')}
RELATION_WORDS = {'left of': ('to the left of', 'left of'), 'right of': ('to the right of',
                                                                         'right of'),
                  'above': ('above',), 'below': ('below',)}
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six')
# Noun-phrase detail: which adjectives precede the kind, with sampling weights.
DETAILS = (('colour',), ('size', 'colour'), (), ('size',))
DETAIL_WEIGHTS = (0.45, 0.25, 0.15, 0.15)
_DETAIL_CUMULATIVE = tuple(itertools.accumulate(DETAIL_WEIGHTS))[:-1]
RANDOM_DIMS = 28  # uniforms used by one caption

# {A}, {B}: noun phrases with their article ("a small red circle"); {a}, {b}: without article;
# {rel}: a relation phrase; {n}: a number word; {list}: "a red circle, a blue star and a ...".
CAPTION_TEMPLATES = {
    'single': '{A}',
    'there_is': 'there is {A}',
    'predicative': 'the {kind} is {colour}',
    'and': '{A} and {B}',
    'rel': '{A} {rel} {B}',
    'there_rel': 'there is {A} {rel} {B}',
    'is_rel': '{A} is {rel} {B}',
    'the_is_rel': 'the {a} is {rel} the {b}',
    'fronted_rel': '{rel} {B} there is {A}',
    'list': '{n} shapes: {list}',
    'count': 'there are {n} shapes',
}
RELATIONAL = ('rel', 'there_rel', 'is_rel', 'the_is_rel', 'fronted_rel')
_TEMPLATE_WEIGHTS = {'single': 1, 'there_is': 1, 'predicative': 1, 'and': 2, 'rel': 2,
                     'there_rel': 2, 'is_rel': 2, 'the_is_rel': 2, 'fronted_rel': 1, 'list': 2,
                     'count': 1}

_TOKEN = re.compile(r'[a-z0-9]+|[^\sa-z0-9]')


def tokenize(text: str) -> list:
  """Lower-case words and single punctuation marks, as BERT's basic tokenizer splits them."""
  return _TOKEN.findall(text.lower())


def with_article(words: str) -> str:
  return ('an ' if words[0] in 'aeiou' else 'a ') + words


def noun_phrase(obj: scenes.ShapeObject, detail: Sequence[str], u: float) -> tuple:
  """Words of `obj` with the adjectives in `detail`, e.g. 'big red circle', and their tuples.

  `u` in [0, 1) picks the size synonym. Returns (words, [tuples]).
  """
  words, tuples = [], [(obj.kind,)]
  if 'size' in detail:
    size_word = SIZE_WORDS[obj.size][int(u * len(SIZE_WORDS[obj.size]))]
    words.append(size_word)
    tuples.append((obj.kind, size_word))
  if 'colour' in detail:
    words.append(obj.colour)
    tuples.append((obj.kind, obj.colour))
  words.append(obj.kind)
  return ' '.join(words), tuples


def clear_pairs(scene: scenes.Scene) -> list:
  """(i, j, relation of i to j) for every ordered pair of shapes with a clear relation."""
  out = []
  for i, a in enumerate(scene.objects):
    for j, b in enumerate(scene.objects):
      if i != j:
        rel = scenes.relation(a, b)
        if rel is not None:
          out.append((i, j, rel))
  return out


class _Linker:
  """Collects (tuple, object index) pairs in order, dropping repeated tuples."""

  def __init__(self):
    self.tuples, self.links = [], []

  def add(self, tuples: Sequence[tuple], index: int) -> None:
    for t in tuples:
      if t not in self.tuples:
        self.tuples.append(t)
        self.links.append(index)


@functools.lru_cache(maxsize=None)
def _fitting_templates(several: bool, related: bool) -> tuple:
  """Templates that fit a scene with several shapes / a clear pair, and their cumulative
  weights."""
  names = tuple(t for t in CAPTION_TEMPLATES if (related or t not in RELATIONAL) and (
      several or t not in ('and', 'list', 'count')))
  return names, tuple(itertools.accumulate(_TEMPLATE_WEIGHTS[t] for t in names))


def make_caption(scene: scenes.Scene, rng: np.random.Generator, template: Optional[str] = None,
                 pairs: Optional[list] = None, u: Optional[np.ndarray] = None) -> Optional[tuple]:
  """One random true caption of `scene`.

  Args:
    scene: the scene to describe.
    rng: source of randomness (unused when `u` is given).
    template: a key of CAPTION_TEMPLATES, or None for a random one that fits the scene.
    pairs: clear_pairs(scene), when the caller already has it.
    u: RANDOM_DIMS uniforms in [0, 1) to use instead of drawing from `rng`.
  Returns:
    (caption, tuples, links) with `links[k]` the object index of `tuples[k]` (-1 for the collective
    'shape' tuples), or None when `template` does not fit the scene.
  """
  objs = scene.objects
  pairs = clear_pairs(scene) if pairs is None else pairs
  if u is None:
    u = rng.random(RANDOM_DIMS)  # [0:8] size words, 8-10 picks, [12:20] details, [20:28] order
  u = u.tolist() if isinstance(u, np.ndarray) else u
  if template is None:
    names, cumulative = _fitting_templates(len(objs) > 1, bool(pairs))
    template = names[bisect.bisect_right(cumulative, u[10] * cumulative[-1])]
  if (template in RELATIONAL and not pairs) or (template in ('and', 'list', 'count')
                                                and len(objs) < 2):
    return None
  details = [bisect.bisect_right(_DETAIL_CUMULATIVE, x) for x in u[12:20]]
  linker = _Linker()

  def phrase(index: int, slot: int) -> str:
    words, tuples = noun_phrase(objs[index], DETAILS[details[slot]], u[slot])
    linker.add(tuples, index)
    return words

  if template in RELATIONAL:
    i, j, rel = pairs[int(u[8] * len(pairs))]
    surface = RELATION_WORDS[rel][int(u[9] * len(RELATION_WORDS[rel]))]
    if template == 'fronted_rel':  # the landmark is mentioned first
      b = phrase(j, 1)
      a = phrase(i, 0)
    else:
      a, b = phrase(i, 0), phrase(j, 1)
    linker.add([(objs[i].kind, rel, objs[j].kind)], i)
    text = CAPTION_TEMPLATES[template].format(A=with_article(a), B=with_article(b), a=a, b=b,
                                              rel=surface)
  elif template in ('single', 'there_is'):
    i = int(u[8] * len(objs))
    text = CAPTION_TEMPLATES[template].format(A=with_article(phrase(i, 0)))
  elif template == 'predicative':  # "the circle is red" only when there is a single circle
    kinds = [o.kind for o in objs]
    unique = [k for k, o in enumerate(objs) if kinds.count(o.kind) == 1]
    if not unique:
      return make_caption(scene, rng, 'there_is', pairs, u)
    i = unique[int(u[8] * len(unique))]
    obj = objs[i]
    linker.add([(obj.kind,), (obj.kind, obj.colour)], i)
    text = CAPTION_TEMPLATES[template].format(kind=obj.kind, colour=obj.colour)
  elif template == 'and':
    i, j = sorted(range(len(objs)), key=lambda k: u[20 + k])[:2]
    text = CAPTION_TEMPLATES[template].format(A=with_article(phrase(i, 0)),
                                              B=with_article(phrase(j, 1)))
  else:  # 'list' or 'count'
    n_word = NUMBER_WORDS[len(objs)]
    linker.add([('shape',), ('shape', n_word)], -1)
    if template == 'count':
      text = CAPTION_TEMPLATES[template].format(n=n_word)
    else:
      order = sorted(range(len(objs)), key=lambda k: u[20 + k])
      items = [with_article(phrase(k, slot)) for slot, k in enumerate(order)]
      listed = ', '.join(items[:-1]) + ' and ' + items[-1]
      text = CAPTION_TEMPLATES[template].format(n=n_word, list=listed)
  return text, linker.tuples, linker.links


def make_captions(scene: scenes.Scene, rng: np.random.Generator, count: int) -> tuple:
  """`count` distinct captions where the scene allows (a one-shape scene may give fewer).

  Returns (captions, tuples per caption, object links per caption).
  """
  captions, tuples, links = [], [], []
  pairs = clear_pairs(scene)
  uniforms = rng.random((4 * count, RANDOM_DIMS))
  for u in uniforms:
    if len(captions) == count:
      break
    text, caption_tuples, caption_links = make_caption(scene, rng, None, pairs, u)
    if text not in captions:
      captions.append(text)
      tuples.append(caption_tuples)
      links.append(caption_links)
  return captions, tuples, links
