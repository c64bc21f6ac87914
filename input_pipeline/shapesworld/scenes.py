"""Scene sampling of ShapesWorld: which shapes, where, and their spatial relations.

A scene is 1-4 non-overlapping shapes on a flat grey background. Coordinates are in pixels of a
square image of side `image_size`, x to the right and y downwards. Spatial relations are decided by
the dominant axis of the centre offset and only stated when that axis clearly dominates, so every
caption, answer and hypothesis built from them is unambiguous.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

KINDS = ('circle', 'square', 'triangle', 'diamond', 'cross', 'hexagon', 'star')
PLURAL_KINDS = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles',
                'diamond': 'diamonds', 'cross': 'crosses', 'hexagon': 'hexagons', 'star': 'stars'}
COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 175, 60),
    'blue': (50, 90, 235),
    'yellow': (235, 215, 50),
    'purple': (150, 60, 205),
    'orange': (245, 140, 30),
    'cyan': (40, 210, 215),
    'white': (240, 240, 240),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ('small', 'large')
# Radius (circumradius of the shape) as a fraction of the image side, per size.
RADIUS_RANGE = {'small': (0.085, 0.10), 'large': (0.14, 0.165)}
RELATIONS = ('left of', 'right of', 'above', 'below')
OPPOSITE = {'left of': 'right of', 'right of': 'left of', 'above': 'below', 'below': 'above'}
# A relation is stated only when |offset| on its axis is >= CLEAR_RATIO x the other axis.
CLEAR_RATIO = 1.3
# Per-channel colour jitter (+-) so that a colour is a region of RGB space, not one exact value.
COLOUR_JITTER = 14
MIN_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One shape: its words (`kind`, `colour`, `size`) and its geometry in pixels."""
  kind: str
  colour: str
  size: str
  cx: float
  cy: float
  radius: float
  rgb: tuple


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple
  background: tuple


def relation(a: ShapeObject, b: ShapeObject) -> Optional[str]:
  """The clear relation of `a` with respect to `b` ('left of', ...), or None when diagonal."""
  dx, dy = a.cx - b.cx, a.cy - b.cy
  if abs(dx) >= CLEAR_RATIO * abs(dy):
    return 'left of' if dx < 0 else 'right of'
  if abs(dy) >= CLEAR_RATIO * abs(dx):
    return 'above' if dy < 0 else 'below'
  return None


def loosely_holds(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
  """Whether `rel` holds in the weakest reading (any offset in its direction counts)."""
  return {'left of': a.cx < b.cx, 'right of': a.cx > b.cx,
          'above': a.cy < b.cy, 'below': a.cy > b.cy}[rel]


def _jittered_rgb(u: Sequence[float], colour: str) -> tuple:
  """RGB of `colour` jittered by 3 uniforms `u` in [0, 1)."""
  return tuple(min(255, max(0, c + int(x * (2 * COLOUR_JITTER + 1)) - COLOUR_JITTER))
               for c, x in zip(COLOURS[colour], u))


def _fits(cx: float, cy: float, radius: float, others: Sequence[ShapeObject], gap: float) -> bool:
  return all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 >= (radius + o.radius + gap) ** 2
             for o in others)


def _place(candidates: Sequence[Sequence[float]], radius: float, placed: Sequence[ShapeObject],
           image_size: int) -> Optional[tuple]:
  """The first of the candidate centres (uniforms [tries][2] in [0, 1)) that keeps the shape
  inside the image and overlaps no placed shape, or None. Plain Python: a few objects only."""
  lo, span = radius + 1.0, image_size - 2 * radius - 2.0
  for ux, uy in candidates:
    cx, cy = lo + span * ux, lo + span * uy
    if _fits(cx, cy, radius, placed, 2.0):
      return cx, cy
  return None


def _pick(options: Sequence, u: float):
  return options[int(u * len(options))]


def sample_scene(rng: np.random.Generator, image_size: int, max_objects: int = 4,
                 min_objects: int = 1) -> Scene:
  """Samples a scene of `min_objects`..`max_objects` shapes with distinct (kind, colour) pairs.

  New shapes often reuse the kind or the colour of an earlier one (but never both), so captions
  must bind colours to kinds: "a red circle and a blue square" vs "a blue circle and a red square".
  All randomness is drawn in two calls (one pool of uniforms, one of candidate centres) for speed.
  """
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f'image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}.')
  if not 1 <= min_objects <= max_objects:
    raise ValueError(f'Need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}.')
  tries, choices = 32, 6
  pool = rng.random(2 + max_objects * (4 * choices + 6)).tolist()
  centre_pool = rng.random((max_objects, 2, tries, 2))
  count = min_objects + int(pool[0] * (max_objects - min_objects + 1))
  objects = []
  for n in range(count):
    u = pool[2 + n * (4 * choices + 6):2 + (n + 1) * (4 * choices + 6)]
    used = {(o.kind, o.colour) for o in objects}
    for t in range(choices):
      kind, colour = _pick(KINDS, u[4 * t]), _pick(COLOUR_NAMES, u[4 * t + 1])
      if objects and u[4 * t + 2] < 0.35:
        kind = _pick(objects, u[4 * t + 3]).kind
      elif objects and u[4 * t + 2] < 0.7:
        colour = _pick(objects, u[4 * t + 3]).colour
      if (kind, colour) not in used:
        break
    else:
      continue
    v = u[4 * choices:]
    for attempt, size in enumerate((_pick(SIZES, v[0]), 'small')):
      lo, hi = RADIUS_RANGE[size]
      radius = float((lo + (hi - lo) * v[1]) * image_size)
      centre = _place(centre_pool[n, attempt].tolist(), radius, objects, image_size)
      if centre is not None:
        objects.append(ShapeObject(kind, colour, size, centre[0], centre[1], radius,
                                   _jittered_rgb(v[2:5], colour)))
        break
  grey = 25 + int(pool[1] * 55)
  return Scene(tuple(objects), (grey, grey, grey))


def _swap_keeps_pairs_distinct(objs: Sequence[ShapeObject], i: int, j: int) -> bool:
  """Whether swapping the colours (equivalently the kinds) of i and j changes both objects and
  keeps every (kind, colour) pair of the scene distinct."""
  a, b = objs[i], objs[j]
  if a.colour == b.colour or a.kind == b.kind:
    return False
  rest = {(o.kind, o.colour) for k, o in enumerate(objs) if k not in (i, j)}
  return (a.kind, b.colour) not in rest and (b.kind, a.colour) not in rest


def perturb_scene(scene: Scene, rng: np.random.Generator, image_size: int,
                  avoid: Sequence[str] = ()) -> tuple:
  """A near-duplicate of `scene` that differs in one compositional fact.

  Returns (scene, kind of change): 'swap_colours' and 'swap_kinds' keep the bag of words of the
  scene and only change which colour goes with which shape; 'swap_positions' and 'mirror' flip
  spatial relations; 'recolour' gives one shape a colour it did not have. Kinds of change in
  `avoid` are not chosen unless nothing else applies.
  """
  objs = list(scene.objects)
  pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
  options = ['recolour', 'mirror']
  valid = [(i, j) for i, j in pairs if _swap_keeps_pairs_distinct(objs, i, j)]
  if valid:
    options += ['swap_colours', 'swap_kinds']
  if pairs:
    options.append('swap_positions')
  options = [o for o in options if o not in avoid] or options
  change = options[rng.integers(len(options))]
  if change in ('swap_colours', 'swap_kinds'):
    i, j = valid[rng.integers(len(valid))]
    if change == 'swap_colours':
      objs[i], objs[j] = (dataclasses.replace(objs[i], colour=objs[j].colour, rgb=objs[j].rgb),
                          dataclasses.replace(objs[j], colour=objs[i].colour, rgb=objs[i].rgb))
    else:
      objs[i], objs[j] = (dataclasses.replace(objs[i], kind=objs[j].kind),
                          dataclasses.replace(objs[j], kind=objs[i].kind))
  elif change == 'swap_positions':
    i, j = pairs[rng.integers(len(pairs))]
    a = dataclasses.replace(objs[i], cx=objs[j].cx, cy=objs[j].cy)
    b = dataclasses.replace(objs[j], cx=objs[i].cx, cy=objs[i].cy)
    rest = [o for k, o in enumerate(objs) if k not in (i, j)]
    inside = all(o.radius + 1.0 <= min(o.cx, o.cy, image_size - o.cx, image_size - o.cy)
                 for o in (a, b))
    if inside and _fits(a.cx, a.cy, a.radius, rest + [b], 2.0) and _fits(
        b.cx, b.cy, b.radius, rest, 2.0):
      objs[i], objs[j] = a, b
    else:
      change = 'mirror'
  if change == 'mirror':
    objs = [dataclasses.replace(o, cx=image_size - o.cx) for o in objs]
  elif change == 'recolour':
    k = int(rng.integers(len(objs)))
    taken = {o.colour for o in objs if o.kind == objs[k].kind}
    free = [c for c in COLOUR_NAMES if c not in taken]
    colour = free[rng.integers(len(free))]
    rgb = _jittered_rgb(rng.random(3).tolist(), colour)
    objs[k] = dataclasses.replace(objs[k], colour=colour, rgb=rgb)
  return Scene(tuple(objs), scene.background), change
