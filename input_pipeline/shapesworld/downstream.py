"""Downstream examples on ShapesWorld scenes: VQA, visual entailment, referring expressions.

Everything is decided from the scene, never from pixels, so every label is exact:
- VQA asks colour, shape, count, existence and relation questions; one answer with score 1.0.
- Visual entailment labels a hypothesis 'entailment' (a true caption), 'contradiction' (a false
  statement about what the image shows: an absent shape, a flipped relation, a wrong count or
  colour) or 'neutral'. A neutral hypothesis says something about a shape that *is* present (or
  about what lies outside the frame) that a picture cannot show: its material, motion, weight or
  temperature, or its past. The same unobservable predicates applied to a shape that is absent
  ("there is a green star made of wood") are contradictions, so the predicate words alone do not
  give the label away.
- A referring expression names exactly one shape: by its attributes ("the small red circle"), by a
  relation to a uniquely named landmark ("the circle to the left of the blue star"), or by position
  among two look-alikes ("the red circle on the left").
Descriptions are (kind, colour, size) triples with None for "not said".
"""

import itertools
from typing import Optional

import numpy as np

from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import scenes

VQA_TEMPLATES = {
    'colour': 'what color is the {d}?',
    'shape': 'what shape is the {d}?',
    'count_all': 'how many shapes are there?',
    'count_colour': 'how many {colour} shapes are there?',
    'count_size': 'how many {size} shapes are there?',
    'count_kind': 'how many {kinds} are there?',
    'exist': 'is there {D}?',
    'relation_yes_no': 'is the {a} {rel} the {b}?',
    'relation_where': 'where is the {a} relative to the {b}?',
}
WHERE_ANSWERS = {'left of': 'left', 'right of': 'right', 'above': 'above', 'below': 'below'}
CONTRADICTION_TEMPLATES = {
    'absent': 'there is {D}',
    'absent_unobservable': 'there is {D} made of {material}',
    'flip': '{A} is {rel} {B}',
    'count': 'there are {n} shapes',
    'count_one': 'there is one shape',
    'predicative': 'the {kind} is {colour}',
}
NEUTRAL_TEMPLATES = {
    'material': 'the {d} is made of {material}',
    'motion': 'the {d} is {motion}',
    'property': 'the {d} is {property}',
    'past': 'the {d} was {colour} a moment ago',
    'outside': 'there is {D} outside the picture',
}
MATERIALS = ('wood', 'metal', 'glass', 'plastic', 'paper', 'stone')
MOTIONS = ('moving', 'spinning', 'falling', 'rolling')
PROPERTIES = ('heavy', 'hot', 'cold', 'soft')
RE_TEMPLATES = {
    'attributes': 'the {d}',
    'relation': 'the {d} {rel} the {l}',
    'side': 'the {d} on the {side}',
    'end': 'the {d} at the {end}',
}
VE_LABELS = ('entailment', 'neutral', 'contradiction')
TASKS = ('vqa', 've', 're')
# Attribute subsets a description may use, from short to long.
_DESCRIPTION_FIELDS = (('kind',), ('kind', 'colour'), ('kind', 'size'), ('kind', 'size', 'colour'))


def matches(obj: scenes.ShapeObject, desc: tuple) -> bool:
  kind, colour, size = desc
  return ((kind is None or obj.kind == kind) and (colour is None or obj.colour == colour) and
          (size is None or obj.size == size))


def describe(obj: scenes.ShapeObject, fields) -> tuple:
  return (obj.kind if 'kind' in fields else None, obj.colour if 'colour' in fields else None,
          obj.size if 'size' in fields else None)


def desc_words(desc: tuple) -> str:
  """'small red circle'; 'red object' when the kind is not said."""
  kind, colour, size = desc
  return ' '.join(w for w in (size, colour, kind or 'object') if w)


def unique_descriptions(scene: scenes.Scene, index: int,
                        fields_options=_DESCRIPTION_FIELDS) -> list:
  """The descriptions (built from `fields_options`) that match object `index` only."""
  obj = scene.objects[index]
  out = []
  for fields in fields_options:
    desc = describe(obj, fields)
    if sum(matches(o, desc) for o in scene.objects) == 1:
      out.append(desc)
  return out


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(len(options)))]


def _uniquely_named_pairs(scene: scenes.Scene) -> list:
  """(i, j, rel, desc_i, desc_j) for clear pairs whose shapes both have a unique description."""
  out = []
  for i, j, rel in language.clear_pairs(scene):
    di, dj = unique_descriptions(scene, i), unique_descriptions(scene, j)
    if di and dj:
      out.append((i, j, rel, di[0], dj[0]))
  return out


def _absent_description(scene: scenes.Scene, rng: np.random.Generator) -> tuple:
  """A (kind, colour) description that matches no shape; both words occur in the scene if
  possible, so that only binding the colour to the kind tells it apart."""
  kinds = sorted({o.kind for o in scene.objects})
  colours = sorted({o.colour for o in scene.objects})
  hard = [(k, c, None) for k, c in itertools.product(kinds, colours)
          if not any(matches(o, (k, c, None)) for o in scene.objects)]
  if hard and rng.random() < 0.8:
    return _pick(rng, hard)
  while True:
    desc = (_pick(rng, scenes.KINDS), _pick(rng, scenes.COLOUR_NAMES), None)
    if not any(matches(o, desc) for o in scene.objects):
      return desc


def _vqa_question(scene: scenes.Scene, rng: np.random.Generator, kind: str) -> Optional[tuple]:
  objs = scene.objects
  t = VQA_TEMPLATES[kind]
  if kind == 'colour':
    options = [(i, d) for i in range(len(objs))
               for d in unique_descriptions(scene, i, (('kind',), ('kind', 'size')))]
    if not options:
      return None
    i, desc = _pick(rng, options)
    return t.format(d=desc_words(desc)), objs[i].colour
  if kind == 'shape':
    options = [(i, d) for i in range(len(objs))
               for d in unique_descriptions(scene, i, (('colour',), ('size', 'colour')))]
    if not options:
      return None
    i, desc = _pick(rng, options)
    return t.format(d=desc_words(desc)), objs[i].kind
  if kind == 'count_all':
    return t, str(len(objs))
  if kind == 'count_colour':
    colour = _pick(rng, scenes.COLOUR_NAMES if rng.random() < 0.2 else [o.colour for o in objs])
    return t.format(colour=colour), str(sum(o.colour == colour for o in objs))
  if kind == 'count_size':
    size = _pick(rng, scenes.SIZES)
    return t.format(size=size), str(sum(o.size == size for o in objs))
  if kind == 'count_kind':
    shape = _pick(rng, scenes.KINDS if rng.random() < 0.2 else [o.kind for o in objs])
    return t.format(kinds=scenes.PLURAL_KINDS[shape]), str(sum(o.kind == shape for o in objs))
  if kind == 'exist':
    if rng.random() < 0.5:
      desc = describe(_pick(rng, objs), _pick(rng, _DESCRIPTION_FIELDS[1:]))
    else:
      desc = _absent_description(scene, rng)
    answer = 'yes' if any(matches(o, desc) for o in objs) else 'no'
    return t.format(D=language.with_article(desc_words(desc))), answer
  pairs = _uniquely_named_pairs(scene)
  if not pairs:
    return None
  _, _, rel, da, db = _pick(rng, pairs)
  if kind == 'relation_where':
    return t.format(a=desc_words(da), b=desc_words(db)), WHERE_ANSWERS[rel]
  asked = rel if rng.random() < 0.5 else scenes.OPPOSITE[rel]
  surface = _pick(rng, language.RELATION_WORDS[asked])
  return (t.format(a=desc_words(da), rel=surface, b=desc_words(db)),
          'yes' if asked == rel else 'no')


def _contradiction(scene: scenes.Scene, rng: np.random.Generator) -> Optional[str]:
  objs = scene.objects
  kind = _pick(rng, tuple(CONTRADICTION_TEMPLATES))
  t = CONTRADICTION_TEMPLATES[kind]
  if kind in ('absent', 'absent_unobservable'):
    desc = _absent_description(scene, rng)
    return t.format(D=language.with_article(desc_words(desc)), material=_pick(rng, MATERIALS))
  if kind == 'flip':
    pairs = _uniquely_named_pairs(scene)
    if not pairs:
      return None
    _, _, rel, da, db = _pick(rng, pairs)
    surface = _pick(rng, language.RELATION_WORDS[scenes.OPPOSITE[rel]])
    return t.format(A=language.with_article(desc_words(da)), rel=surface,
                    B=language.with_article(desc_words(db)))
  if kind in ('count', 'count_one'):
    wrong = [n for n in range(1, 5) if n != len(objs)]
    n = _pick(rng, wrong)
    return CONTRADICTION_TEMPLATES['count_one'] if n == 1 else CONTRADICTION_TEMPLATES[
        'count'].format(n=language.NUMBER_WORDS[n])
  kinds = [o.kind for o in objs]
  unique = [o for o in objs if kinds.count(o.kind) == 1]
  if not unique:
    return None
  obj = _pick(rng, unique)
  colour = _pick(rng, [c for c in scenes.COLOUR_NAMES if c != obj.colour])
  return t.format(kind=obj.kind, colour=colour)


def _neutral(scene: scenes.Scene, rng: np.random.Generator) -> Optional[str]:
  kind = _pick(rng, tuple(NEUTRAL_TEMPLATES))
  t = NEUTRAL_TEMPLATES[kind]
  if kind == 'outside':
    desc = describe(_pick(rng, scene.objects), _pick(rng, _DESCRIPTION_FIELDS))
    return t.format(D=language.with_article(desc_words(desc)))
  index = int(rng.integers(len(scene.objects)))
  options = unique_descriptions(scene, index)
  if not options:
    return None
  other = [c for c in scenes.COLOUR_NAMES if c != scene.objects[index].colour]
  return t.format(d=desc_words(_pick(rng, options)), material=_pick(rng, MATERIALS),
                  motion=_pick(rng, MOTIONS), property=_pick(rng, PROPERTIES),
                  colour=_pick(rng, other))


def _referring(scene: scenes.Scene, rng: np.random.Generator, index: int) -> list:
  """Every expression of RE_TEMPLATES that names object `index` and no other: (by attributes,
  by relation or position)."""
  objs = scene.objects
  target = objs[index]
  by_attributes = [RE_TEMPLATES['attributes'].format(d=desc_words(d))
                   for d in unique_descriptions(scene, index)]
  out = []
  for fields in _DESCRIPTION_FIELDS[:2]:
    desc = describe(target, fields)
    look_alikes = [k for k, o in enumerate(objs) if k != index and matches(o, desc)]
    if not look_alikes:
      continue
    for landmark in range(len(objs)):
      rel = scenes.relation(target, objs[landmark])
      named = unique_descriptions(scene, landmark)
      if landmark == index or rel is None or not named:
        continue
      if not any(scenes.loosely_holds(objs[k], objs[landmark], rel) for k in look_alikes
                 if k != landmark):
        out.append(RE_TEMPLATES['relation'].format(
            d=desc_words(desc), rel=_pick(rng, language.RELATION_WORDS[rel]),
            l=desc_words(named[0])))
    if len(look_alikes) == 1:
      rel = scenes.relation(target, objs[look_alikes[0]])
      if rel in ('left of', 'right of'):
        out.append(RE_TEMPLATES['side'].format(d=desc_words(desc), side=rel.split()[0]))
      elif rel is not None:
        end = 'top' if rel == 'above' else 'bottom'
        out.append(RE_TEMPLATES['end'].format(d=desc_words(desc), end=end))
  return by_attributes, out


def vqa_examples(scene: scenes.Scene, rng: np.random.Generator, count: int) -> list:
  """Up to `count` distinct (question, answer) pairs."""
  out = []
  for _ in range(4 * count):
    if len(out) == count:
      break
    qa = _vqa_question(scene, rng, _pick(rng, tuple(VQA_TEMPLATES)))
    if qa is not None and qa[0] not in [q for q, _ in out]:
      out.append(qa)
  return out


def entailment_examples(scene: scenes.Scene, rng: np.random.Generator, count: int) -> list:
  """Up to `count` distinct (hypothesis, label) pairs, labels drawn uniformly."""
  out = []
  for _ in range(4 * count):
    if len(out) == count:
      break
    label = _pick(rng, VE_LABELS)
    if label == 'entailment':
      text = language.make_caption(scene, rng)[0]
    elif label == 'contradiction':
      text = _contradiction(scene, rng)
    else:
      text = _neutral(scene, rng)
    if text is not None and text not in [h for h, _ in out]:
      out.append((text, label))
  return out


def referring_examples(scene: scenes.Scene, rng: np.random.Generator, count: int) -> list:
  """Up to `count` (expression, object index) pairs for distinct objects; relational and
  positional expressions are preferred (2 to 1) when the object has one."""
  out = []
  for index in rng.permutation(len(scene.objects))[:count]:
    by_attributes, by_relation = _referring(scene, rng, int(index))
    if by_relation and (not by_attributes or rng.random() < 2 / 3):
      out.append((_pick(rng, by_relation), int(index)))
    elif by_attributes:
      out.append((_pick(rng, by_attributes), int(index)))
  return out
