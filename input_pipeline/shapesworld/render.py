"""Numpy rasteriser of ShapesWorld scenes and a minimal PNG encoder.

Shapes are drawn with hard edges (no anti-aliasing), so every pixel of a shape has exactly that
shape's RGB. Each shape is rasterised on the window of its bounding circle only, by testing pixel
centres against closed-form half-plane / polar inequalities.
"""

import struct
import zlib

import numpy as np

from input_pipeline.shapesworld import scenes

_SQRT3 = np.sqrt(3.0)
_STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
_STAR_HALF = np.pi / 5  # half the angle between two points of the star


def _star_mask(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  theta = np.arctan2(dx, -dy)  # 0 points up
  phi = np.abs(np.mod(theta + _STAR_HALF, 2 * _STAR_HALF) - _STAR_HALF)
  ri = _STAR_INNER * r
  # Polar equation of the edge from the outer point (r, 0) to the inner corner (ri, _STAR_HALF).
  edge = r * ri * np.sin(_STAR_HALF) / (r * np.sin(phi) + ri * np.sin(_STAR_HALF - phi))
  return dx * dx + dy * dy <= edge * edge


def shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask [h, w] of `kind` with circumradius `r` (every shape lies inside that circle).

  Args:
    dx: float [1, w] (or [h, w]) x offsets of pixel centres from the shape centre.
    dy: float [h, 1] (or [h, w]) y offsets.
  """
  ax, ay = np.abs(dx), np.abs(dy)
  if kind == 'circle':
    return dx * dx + dy * dy <= r * r
  if kind == 'square':
    return np.maximum(ax, ay) <= 0.8 * r
  if kind == 'diamond':
    return ax + ay <= r
  if kind == 'triangle':  # pointing up, centroid at the centre
    return (dy <= 0.5 * r) & (dy >= _SQRT3 * ax - r)
  if kind == 'hexagon':  # pointy top
    return (ax <= 0.5 * _SQRT3 * r) & (ay + ax / _SQRT3 <= r)
  if kind == 'cross':
    arm = 0.33 * r
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
  if kind == 'star':
    return _star_mask(dx, dy, r)
  raise ValueError(f'Unknown shape kind {kind!r}; known: {scenes.KINDS}.')


def render_scene(scene: scenes.Scene, image_size: int) -> tuple:
  """Draws `scene` on a square canvas.

  Returns:
    image: uint8 [image_size, image_size, 3].
    extents: float32 [num_objects, 4], the (x1, y1, x2, y2) pixel box of each drawn shape (x2, y2
      exclusive), in the order of `scene.objects`.
  """
  image = np.empty((image_size, image_size, 3), np.uint8)
  image[...] = scene.background
  extents = np.zeros((len(scene.objects), 4), np.float32)
  centres = np.arange(image_size, dtype=np.float32) + 0.5
  for k, obj in enumerate(scene.objects):
    x0, y0 = max(int(obj.cx - obj.radius) - 1, 0), max(int(obj.cy - obj.radius) - 1, 0)
    x1 = min(int(obj.cx + obj.radius) + 2, image_size)
    y1 = min(int(obj.cy + obj.radius) + 2, image_size)
    mask = shape_mask(obj.kind, centres[None, x0:x1] - obj.cx, centres[y0:y1, None] - obj.cy,
                      obj.radius)
    image[y0:y1, x0:x1][mask] = obj.rgb
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    extents[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
  return image, extents


def _png_chunk(tag: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data))


def encode_png(image: np.ndarray, level: int = 6) -> bytes:
  """PNG bytes (8-bit RGB, no filtering) of a uint8 [H, W, 3] image; deterministic."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'Expected uint8 [H, W, 3], got {image.dtype} {image.shape}.')
  height, width = image.shape[:2]
  rows = np.zeros((height, 1 + 3 * width), np.uint8)  # filter byte 0 at the start of each row
  rows[:, 1:] = image.reshape(height, -1)
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header) +
          _png_chunk(b'IDAT', zlib.compress(rows.tobytes(), level)) + _png_chunk(b'IEND', b''))
