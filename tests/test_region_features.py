"""Tests of the fixed pixel -> region-feature extractor.

  python -m pytest tests/test_region_features.py -q
"""

import numpy as np
import pytest

from input_pipeline import region_features
from input_pipeline.shapesworld import render
from input_pipeline.shapesworld import scenes


def _canvas(*objects, size=64, background=(40, 40, 40)):
  image, extents = render.render_scene(scenes.Scene(tuple(objects), background), size)
  return image, extents


def _shape(kind, rgb, cx, cy, radius=9.0):
  return scenes.ShapeObject(kind, 'red', 'large', cx, cy, radius, rgb)


def _appearance(image, boxes, dim=134):
  return region_features.extract_region_features(image, boxes, dim)[:, :-6]


@pytest.mark.parametrize('dim', [7, 64, 134, region_features.RAW_DIM + 6, 2054])
def test_shapes_dtype_and_box_dims(dim):
  image, extents = _canvas(_shape('circle', (220, 40, 40), 20.0, 20.0))
  boxes = np.concatenate([extents, [[0, 0, 64, 48], [3.5, 7.25, 30.0, 40.0]]])
  out = region_features.extract_region_features(image[:48], boxes, dim)
  assert out.dtype == np.float32 and out.shape == (3, dim)
  x1, y1, x2, y2 = boxes.T
  expected = np.stack([x1 / 64, y1 / 48, x2 / 64, y2 / 48, (x2 - x1) / 64, (y2 - y1) / 48], 1)
  np.testing.assert_allclose(out[:, -6:], expected, atol=1e-6)
  assert np.all(np.isfinite(out))


def test_identical_crops_give_identical_features_and_calls_are_deterministic():
  image, extents = _canvas(_shape('star', (50, 90, 235), 16.0, 16.0),
                           _shape('star', (50, 90, 235), 46.0, 40.0))
  np.testing.assert_array_equal(extents[0] + [30, 24, 30, 24], extents[1])
  feats = _appearance(image, extents)
  np.testing.assert_array_equal(feats[0], feats[1])
  np.testing.assert_array_equal(feats, _appearance(image.copy(), extents.copy()))


def test_colour_and_kind_change_the_features():
  boxes = np.array([[6.0, 6.0, 26.0, 26.0]])
  base = _appearance(_canvas(_shape('circle', (220, 40, 40), 16.0, 16.0))[0], boxes)[0]
  recoloured = _appearance(_canvas(_shape('circle', (50, 90, 235), 16.0, 16.0))[0], boxes)[0]
  reshaped = _appearance(_canvas(_shape('square', (220, 40, 40), 16.0, 16.0))[0], boxes)[0]
  scale = np.linalg.norm(base)
  assert np.linalg.norm(base - recoloured) > 0.1 * scale
  assert np.linalg.norm(base - reshaped) > 0.03 * scale
  # Every pair of kinds and every pair of colours is told apart by the raw descriptor.
  raw = {}
  for kind in scenes.KINDS:
    image = _canvas(_shape(kind, (240, 240, 240), 16.0, 16.0, radius=10.0))[0]
    raw[kind] = region_features._appearance(  # pylint: disable=protected-access
        image, boxes.astype(np.float32))[0]
  kinds = list(raw)
  for i, a in enumerate(kinds):
    for b in kinds[i + 1:]:
      assert np.abs(raw[a] - raw[b]).max() > 0.1, (a, b)
  colours = [_appearance(_canvas(_shape('circle', rgb, 16.0, 16.0))[0], boxes)[0]
             for rgb in scenes.COLOURS.values()]
  gaps = [np.linalg.norm(x - y) for i, x in enumerate(colours) for y in colours[i + 1:]]
  assert min(gaps) > 0.05 * scale


def test_box_position_is_only_in_the_box_dims():
  image, extents = _canvas(_shape('triangle', (40, 175, 60), 16.0, 16.0),
                           _shape('triangle', (40, 175, 60), 46.0, 16.0))
  out = region_features.extract_region_features(image, extents, 64)
  np.testing.assert_array_equal(out[0, :-6], out[1, :-6])
  assert not np.array_equal(out[0, -6:], out[1, -6:])


def test_small_boxes_and_empty_box_list():
  image = np.zeros((10, 12, 3), np.uint8)
  out = region_features.extract_region_features(image, [[0, 0, 0.5, 0.5], [11, 9, 12, 10]], 16)
  assert out.shape == (2, 16) and np.all(np.isfinite(out))
  assert region_features.extract_region_features(image, np.zeros((0, 4)), 16).shape == (0, 16)


@pytest.mark.parametrize('image, boxes, dim, message', [
    (np.zeros((8, 8), np.uint8), [[0, 0, 4, 4]], 16, r'\[H, W, 3\]'),
    (np.zeros((8, 8, 4), np.uint8), [[0, 0, 4, 4]], 16, r'\[H, W, 3\]'),
    (np.zeros((8, 8, 3), np.float32), [[0, 0, 4, 4]], 16, 'uint8'),
    (np.zeros((8, 8, 3), np.uint8), [[0, 0, 9, 4]], 16, 'outside'),
    (np.zeros((8, 8, 3), np.uint8), [[-1, 0, 4, 4]], 16, 'outside'),
    (np.zeros((8, 8, 3), np.uint8), [[0, 0, np.nan, 4]], 16, 'outside'),
    (np.zeros((8, 8, 3), np.uint8), [[4, 0, 4, 4]], 16, 'empty'),
    (np.zeros((8, 8, 3), np.uint8), [[0, 0, 4]], 16, r'\[N, 4\]'),
    (np.zeros((8, 8, 3), np.uint8), [[0, 0, 4, 4]], 6, 'feature_dim'),
])
def test_bad_inputs_raise(image, boxes, dim, message):
  with pytest.raises(ValueError, match=message):
    region_features.extract_region_features(image, boxes, dim)


def test_grid_boxes():
  boxes = region_features.grid_boxes(30, 40, grid=(2, 4))
  assert boxes.dtype == np.float32 and boxes.shape == (9, 4)
  np.testing.assert_allclose(boxes[0], [0, 0, 10, 15])
  np.testing.assert_allclose(boxes[7], [30, 15, 40, 30])
  np.testing.assert_allclose(boxes[-1], [0, 0, 40, 30])
  cells = boxes[:-1]
  assert np.isclose(((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).sum(), 1200)
  assert region_features.grid_boxes(64, 64).shape == (17, 4)
  image = np.zeros((30, 40, 3), np.uint8)
  assert region_features.extract_region_features(image, boxes, 134).shape == (9, 134)
  with pytest.raises(ValueError):
    region_features.grid_boxes(30, 40, grid=0)
