"""The truth of the world: which ShapesWorld captions are true of which scenes.

A caption is parsed into a canonical *meaning* (a hashable tuple), and a scene lists every meaning
its templates can express that is true of it; "caption c is true of scene s" is then
`meaning(c) in true_meanings(s)`. Two captions with the same meaning ("there is a big circle" and
"a large circle") are true of the same scenes. Meanings, with NP = (size, colour, kind) where
size is 'small' / 'large' / '' and colour '' when the caption does not say it:

  ('exists', NP)                 "a red circle", "there is a red circle"
  ('the', kind, colour)          "the circle is red": exactly one circle, and it is red
  ('and', NP, NP)                "A and B": two different shapes (NPs sorted)
  ('rel', NP_a, rel, NP_b)       "A left of B" and its variants: shapes a != b with the clear
                                 relation of scenes.relation (the rule the generator states
                                 relations by); 'right of' / 'below' are stored as the swapped
                                 'left of' / 'above'
  ('list', n, (NP, ...))         "three shapes: A, B and C": exactly n shapes, matched one to one
                                 to the NPs (sorted)
  ('count', n)                   "there are three shapes"

An NP is true of a shape when every word it says is (kind, colour, and 'small' / 'large' = 'big').
`split_truth` turns a split into ids: one meaning id per caption and, per image, the ids of the
split's meanings true of it (the representation of input_pipeline/true_matches.py).
"""

import itertools
import re
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import scenes

Meaning = tuple
NounPhrase = Tuple[str, str, str]

_SIZE_OF_WORD = {word: size for size, words in language.SIZE_WORDS.items() for word in words}
_RELATION_OF_WORDS = {words: rel for rel, options in language.RELATION_WORDS.items()
                      for words in options}
_SWAPPED = {'right of': 'left of', 'below': 'above'}
_NP = (r'(?:(?:{sizes}) )?(?:(?:{colours}) )?(?:{kinds})').format(
    sizes='|'.join(_SIZE_OF_WORD), colours='|'.join(scenes.COLOUR_NAMES),
    kinds='|'.join(scenes.KINDS))
_A = rf'an? ({_NP})'
_REL = '({})'.format('|'.join(sorted(_RELATION_OF_WORDS, key=len, reverse=True)))
_NUMBER = '({})'.format('|'.join(language.NUMBER_WORDS))
# (regex, meaning kind, group order): the templates of language.CAPTION_TEMPLATES.
_PATTERNS = [
    (re.compile(rf'^there are {_NUMBER} shapes$'), 'count'),
    (re.compile(rf'^{_NUMBER} shapes: (.+)$'), 'list'),
    (re.compile(rf'^{_REL} {_A} there is {_A}$'), 'fronted_rel'),
    (re.compile(rf'^there is {_A} {_REL} {_A}$'), 'rel'),
    (re.compile(rf'^{_A} is {_REL} {_A}$'), 'rel'),
    (re.compile(rf'^the ({_NP}) is {_REL} the ({_NP})$'), 'rel'),
    (re.compile(rf'^{_A} {_REL} {_A}$'), 'rel'),
    (re.compile(rf'^the ({"|".join(scenes.KINDS)}) is ({"|".join(scenes.COLOUR_NAMES)})$'),
     'the'),
    (re.compile(rf'^{_A} and {_A}$'), 'and'),
    (re.compile(rf'^(?:there is )?{_A}$'), 'exists'),
]


def noun_phrase(words: str) -> NounPhrase:
  """'big red circle' -> ('large', 'red', 'circle'); unsaid words are ''."""
  tokens = words.split()
  size = _SIZE_OF_WORD.get(tokens[0], '') if len(tokens) > 1 else ''
  colour = tokens[-2] if len(tokens) > 1 and tokens[-2] in scenes.COLOURS else ''
  return size, colour, tokens[-1]


def _relation(a: NounPhrase, rel: str, b: NounPhrase) -> Meaning:
  if rel in _SWAPPED:
    return ('rel', b, _SWAPPED[rel], a)
  return ('rel', a, rel, b)


def parse_caption(text: str) -> Meaning:
  """The canonical meaning of a ShapesWorld caption; ValueError for a sentence of no template."""
  normal = ' '.join(text.lower().split())
  for pattern, kind in _PATTERNS:
    match = pattern.match(normal)
    if match is None:
      continue
    g = match.groups()
    if kind == 'count':
      return ('count', language.NUMBER_WORDS.index(g[0]))
    if kind == 'list':
      items = re.split(r', | and ', g[1])
      if not all(re.fullmatch(_A, item) for item in items):
        break
      return ('list', language.NUMBER_WORDS.index(g[0]),
              tuple(sorted(noun_phrase(re.fullmatch(_A, i).group(1)) for i in items)))
    if kind == 'fronted_rel':
      return _relation(noun_phrase(g[2]), _RELATION_OF_WORDS[g[0]], noun_phrase(g[1]))
    if kind == 'rel':
      return _relation(noun_phrase(g[0]), _RELATION_OF_WORDS[g[1]], noun_phrase(g[2]))
    if kind == 'the':
      return ('the', g[0], g[1])
    if kind == 'and':
      return ('and',) + tuple(sorted((noun_phrase(g[0]), noun_phrase(g[1]))))
    return ('exists', noun_phrase(g[0]))
  raise ValueError(f'Caption {text!r} is not a ShapesWorld caption (no template of '
                   'language.CAPTION_TEMPLATES reads it).')


def describing_phrases(obj: scenes.ShapeObject) -> List[NounPhrase]:
  """The 4 NPs true of a shape: with or without its size, with or without its colour."""
  return [(size, colour, obj.kind) for size in ('', obj.size) for colour in ('', obj.colour)]


def true_meanings(scene: scenes.Scene) -> Set[Meaning]:
  """Every meaning (module docstring) true of `scene`."""
  objs = scene.objects
  phrases = [describing_phrases(o) for o in objs]
  out: Set[Meaning] = {('count', len(objs))}
  for k, obj in enumerate(objs):
    out.update(('exists', p) for p in phrases[k])
    if sum(o.kind == obj.kind for o in objs) == 1:
      out.add(('the', obj.kind, obj.colour))
  for i, j in itertools.combinations(range(len(objs)), 2):
    out.update(('and',) + tuple(sorted(pair)) for pair in itertools.product(phrases[i],
                                                                           phrases[j]))
  for i, j, rel in language.clear_pairs(scene):
    if rel not in _SWAPPED:  # each clear pair once, in its canonical direction
      out.update(('rel', a, rel, b) for a in phrases[i] for b in phrases[j])
  if objs:
    out.update(('list', len(objs), tuple(sorted(choice)))
               for choice in itertools.product(*phrases))
  return out


def is_true(caption: str, scene: scenes.Scene) -> bool:
  """Whether `caption` is true of `scene`."""
  return parse_caption(caption) in true_meanings(scene)


def meaning_key(meaning: Meaning) -> str:
  """A stable string of a meaning (stored in truth files)."""
  return repr(meaning)


def split_truth(scene_list: Sequence[scenes.Scene],
                captions: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
  """Ids of a split's meanings: which of the split's captions are true of which of its images.

  Args:
    scene_list: the scene of every image, in stored order [I].
    captions: the captions of every image, in stored order (example order is image-major).

  Returns:
    'meanings' [M] str (meaning_key, id = position), 'caption_meaning' [C] int32 (C = all
    captions, image-major), 'image_offsets' [I + 1] int64 and 'image_meanings' [sum] int32: the
    sorted ids true of image i are image_meanings[image_offsets[i]:image_offsets[i + 1]].
  """
  if len(scene_list) != len(captions):
    raise ValueError(f'{len(scene_list)} scenes but captions of {len(captions)} images.')
  ids: Dict[Meaning, int] = {}
  caption_meaning = []
  for image, texts in enumerate(captions):
    for text in texts:
      try:
        meaning = parse_caption(text)
      except ValueError as e:
        raise ValueError(f'image {image}: {e}') from None
      caption_meaning.append(ids.setdefault(meaning, len(ids)))
  per_image: List[np.ndarray] = []
  starts = np.concatenate([[0], np.cumsum([len(c) for c in captions])])
  for image, scene in enumerate(scene_list):
    true = sorted(ids[m] for m in true_meanings(scene) if m in ids)
    own = set(caption_meaning[starts[image]:starts[image + 1]])
    if not own <= set(true):
      raise ValueError(f'image {image}: its own captions {sorted(own - set(true))} are not true '
                       'of its scene (generator and truth disagree).')
    per_image.append(np.asarray(true, np.int32))
  offsets = np.concatenate([[0], np.cumsum([len(t) for t in per_image])]).astype(np.int64)
  return {'meanings': np.asarray([meaning_key(m) for m in ids], dtype=str),
          'caption_meaning': np.asarray(caption_meaning, np.int32),
          'image_offsets': offsets,
          'image_meanings': (np.concatenate(per_image) if per_image
                             else np.zeros(0, np.int32)).astype(np.int32)}

