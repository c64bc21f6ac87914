"""Grid and box pooling of patch features against hand computations (mvp_jax/vision/regions.py).

The patch grid is 4 x 4 with a constant one-hot feature per quadrant (top-left = e0, top-right =
e1, bottom-left = e2, bottom-right = e3), so each region's answer can be worked out by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from mvp_jax.vision import regions
from mvp_jax.vision import towers
from mvp_jax.vision.config import SiglipConfig, VisionConfig

GRID = (4, 4)


def _quadrant_tokens():
  quadrant = np.zeros((4, 4), np.int64)
  quadrant[:2, 2:], quadrant[2:, :2], quadrant[2:, 2:] = 1, 2, 3
  return np.eye(4, dtype=np.float32)[quadrant.reshape(-1)][None], quadrant  # [1, 16, 4]


def _pool(boxes, mode, samples=0):
  tokens, _ = _quadrant_tokens()
  feats, weights = jax.jit(regions.region_features, static_argnums=(1, 3, 4))(
      jnp.asarray(tokens), GRID, jnp.asarray(boxes, jnp.float32)[None], mode, samples)
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
  return np.asarray(feats)[0]


def test_grid_cells_two_by_two_are_the_quadrants():
  feats = _pool(regions.grid_boxes(2), 'area')
  np.testing.assert_allclose(feats[:4, :4], np.eye(4), atol=1e-6)
  np.testing.assert_allclose(feats[4, :4], [0.25] * 4, atol=1e-6)  # the whole image
  np.testing.assert_allclose(feats[1, 4:], [0.5, 0, 1, 0.5, 0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(feats[4, 4:], [0, 0, 1, 1, 1, 1], atol=1e-6)


def test_grid_cells_that_cut_patches():
  # 3 x 3 cells on 4 x 4 patches: each cell edge at 1/3, 2/3 cuts a patch.
  feats = _pool(regions.grid_boxes(3), 'area')
  assert feats.shape == (10, 10)
  np.testing.assert_allclose(feats[0, :4], [1, 0, 0, 0], atol=1e-6)      # top-left cell
  np.testing.assert_allclose(feats[1, :4], [0.5, 0.5, 0, 0], atol=1e-6)  # straddles the x border
  np.testing.assert_allclose(feats[4, :4], [0.25] * 4, atol=1e-6)        # the centre cell
  np.testing.assert_allclose(feats[5, :4], [0, 0.5, 0, 0.5], atol=1e-6)  # straddles the y border
  np.testing.assert_allclose(feats[1, 4:], [1 / 3, 0, 2 / 3, 1 / 3, 1 / 3, 1 / 3], atol=1e-6)
  # A 3 x 3 grid of 4 x 4 patches: the top-left cell takes patch (0, 0) fully, (0, 1) by 1/3.
  weights = np.asarray(regions.pooling_weights(jnp.asarray(regions.grid_boxes(3)[:1]), GRID,
                                               'area')).reshape(4, 4)
  profile = np.array([0.25, 1 / 12, 0, 0]) * 3
  np.testing.assert_allclose(weights, np.outer(profile, profile), atol=1e-6)


def _reference_roi_align(boxes, samples):
  """Independent RoIAlign: scipy's order-1 interpolation (border clamp) at each sample."""
  tokens, _ = _quadrant_tokens()
  maps = tokens[0].reshape(4, 4, 4)
  out = []
  for x1, y1, x2, y2 in boxes:
    steps = (np.arange(samples) + 0.5) / samples
    ys, xs = np.meshgrid(y1 + (y2 - y1) * steps, x1 + (x2 - x1) * steps, indexing='ij')
    coords = [ys.ravel() * 4 - 0.5, xs.ravel() * 4 - 0.5]
    out.append([ndimage.map_coordinates(maps[..., c], coords, order=1, mode='nearest').mean()
                for c in range(4)])
  return np.asarray(out)


def test_boxes_bilinear_known_answers():
  boxes = np.array([
      [0.125, 0.125, 0.375, 0.375],  # between the top-left patch centres: pure e0
      [0.25, 0.125, 0.75, 0.375],    # across the vertical patch border, symmetric: e0/e1 halves
      [0.25, 0.25, 0.75, 0.75],      # centred on the image: a quarter of each
      [0.8, 0.8, 1.0, 1.0],          # against the bottom-right edge: clamped, pure e3
  ], np.float32)
  feats = _pool(boxes, 'bilinear', samples=8)
  np.testing.assert_allclose(feats[:, :4], [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.25] * 4,
                                            [0, 0, 0, 1]], atol=1e-6)
  np.testing.assert_allclose(feats[:, 4:8], boxes, atol=1e-7)
  np.testing.assert_allclose(feats[:, 8:], boxes[:, 2:] - boxes[:, :2], atol=1e-7)


@pytest.mark.parametrize('samples', [3, 7])
def test_boxes_bilinear_match_independent_roi_align(samples):
  rng = np.random.default_rng(0)
  corners = np.sort(rng.uniform(0, 1, (12, 2, 2)), axis=1)  # random boxes crossing borders
  boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1)
  feats = _pool(boxes, 'bilinear', samples=samples)
  np.testing.assert_allclose(feats[:, :4], _reference_roi_align(boxes, samples), atol=1e-6)
  # A box whose top-left crosses a patch border mixes e0 and e1 in a proportion != 1/2.
  mixed = _pool(np.array([[0.3, 0.1, 0.9, 0.3]], np.float32), 'bilinear', samples)[0, :4]
  assert 0.05 < mixed[0] < 0.95 and mixed[0] + mixed[1] == pytest.approx(1, abs=1e-6)


def test_pixel_boxes_clip_at_the_image_edge():
  clipped = regions.normalise_boxes(np.array([[-10, -10, 20, 20], [40, 50, 80, 70]]), 64, 64)
  np.testing.assert_allclose(clipped, [[0, 0, 20 / 64, 20 / 64], [40 / 64, 50 / 64, 1, 1]])
  feats = _pool(clipped, 'bilinear')
  np.testing.assert_allclose(feats[:, :4], [[1, 0, 0, 0], [0, 0, 0, 1]], atol=1e-6)
  with pytest.raises(ValueError, match=r'box \[70.0, 0.0, 90.0, 10.0\] is empty'):
    regions.normalise_boxes(np.array([[70, 0, 90, 10]]), 64, 64)


def test_region_embeddings_restrict_the_map_head():
  config = SiglipConfig(vision=VisionConfig(width=16, depth=1, num_heads=2, mlp_dim=24,
                                            patch_size=4, posemb_grid=(4, 4)), text=None)
  params = towers.init_params(config, jax.random.PRNGKey(0))
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3), minval=-1, maxval=1)
  boxes = jnp.broadcast_to(jnp.asarray(regions.grid_boxes(2)), (2, 5, 4))
  bias = regions.pooling_bias(regions.pooling_weights(boxes, GRID, 'area'))
  out = towers.VisionTower(config).apply({'params': params['img']}, images, bias)
  # The whole-image region (uniform weights) is exactly the MAP-head image embedding.
  np.testing.assert_allclose(out['regions'][:, 4], out['pooled'], atol=1e-5)
  assert np.abs(np.asarray(out['regions'][:, 0] - out['pooled'])).max() > 1e-3
  # A quadrant's embedding depends only on that quadrant's patches.
  tokens = out['tokens']
  changed = tokens.at[:, 15].add(5.0)  # a bottom-right patch
  head = towers.MAPHead(2, 24, 1e-6)
  p = {'params': params['img']['map_head']}
  np.testing.assert_allclose(head.apply(p, changed, bias)[:, 0], head.apply(p, tokens, bias)[:, 0],
                             atol=1e-6)
