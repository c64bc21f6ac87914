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


def test_bins_keep_the_layout_inside_a_box():
  tokens, _ = _quadrant_tokens()
  pool = jax.jit(regions.region_features, static_argnums=(1, 3, 4, 5))
  whole = jnp.asarray([[[0.0, 0.0, 1.0, 1.0]]])
  feats, weights = pool(jnp.asarray(tokens), GRID, whole, 'area', 0, 2)
  # Row-major bins of the whole image are the quadrants, in order; the weights stay the box's.
  np.testing.assert_allclose(np.asarray(feats)[0, 0, :16], np.eye(4).reshape(-1), atol=1e-6)
  np.testing.assert_allclose(np.asarray(feats)[0, 0, 16:], [0, 0, 1, 1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(weights)[0, 0], 1 / 16, atol=1e-7)
  rng = np.random.default_rng(1)
  corners = np.sort(rng.uniform(0, 1, (6, 2, 2)), axis=1)
  boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1)
  boxes = jnp.asarray(boxes, jnp.float32)[None]
  # With area pooling the bins' mean is the whole box's feature.
  one, _ = pool(jnp.asarray(tokens), GRID, boxes, 'area', 0, 1)
  three, _ = pool(jnp.asarray(tokens), GRID, boxes, 'area', 0, 3)
  np.testing.assert_allclose(np.asarray(three)[0, :, :36].reshape(6, 9, 4).mean(1),
                             np.asarray(one)[0, :, :4], atol=1e-6)
  # Bilinear bins are the independent RoIAlign of each sub-box.
  two, _ = pool(jnp.asarray(tokens), GRID, boxes, 'bilinear', 5, 2)
  sub = np.asarray(regions.bin_boxes(boxes, 2))[0].reshape(-1, 4)
  np.testing.assert_allclose(np.asarray(two)[0, :, :16].reshape(-1, 4),
                             _reference_roi_align(sub, 5), atol=1e-6)
  np.testing.assert_allclose(sub[1], [(boxes[0, 0, 0] + boxes[0, 0, 2]) / 2, boxes[0, 0, 1],
                                      boxes[0, 0, 2], (boxes[0, 0, 1] + boxes[0, 0, 3]) / 2],
                             atol=1e-6)


def test_crops_are_bilinear_samples_of_the_box():
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, (2, 12, 16, 3)).astype(np.float32)
  boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.3, 0.55, 0.9]],
                    [[0.5, 0.0, 1.0, 0.5], [0.2, 0.2, 0.3, 0.25]]], np.float32)
  crops = np.asarray(jax.jit(regions.crop_images, static_argnums=2)(
      jnp.asarray(images), jnp.asarray(boxes), 6))
  assert crops.shape == (2, 2, 6, 6, 3)
  for b in range(2):
    for r, (x1, y1, x2, y2) in enumerate(boxes[b]):
      centres = (np.arange(6) + 0.5) / 6
      ys, xs = np.meshgrid(y1 + (y2 - y1) * centres, x1 + (x2 - x1) * centres, indexing='ij')
      for c in range(3):
        want = ndimage.map_coordinates(images[b, ..., c], [ys * 12 - 0.5, xs * 16 - 0.5],
                                       order=1, mode='nearest')
        np.testing.assert_allclose(crops[b, r, ..., c], want, atol=1e-5)
  # The whole image at its own size is the image itself.
  whole = jnp.asarray([[[0.0, 0.0, 1.0, 1.0]]] * 2)
  same = regions.crop_images(jnp.asarray(images[:, :12, :12]), whole, 12)
  np.testing.assert_allclose(np.asarray(same)[:, 0], images[:, :12, :12], atol=1e-5)


def test_crop_region_features_encode_each_box_alone():
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  boxes = jnp.asarray([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]] * 2)
  # An encoder whose 2 x 2 tokens are the mean colour of each 4 x 4 quadrant of its input.
  encode = lambda x: {'tokens': x.reshape(-1, 2, 4, 2, 4, 3).mean((2, 4)).reshape(-1, 4, 3),
                      'grid': (2, 2)}
  feats, out = regions.crop_region_features(encode, images, boxes, 8, 'area', 0, 2)
  assert feats.shape == (2, 3, 4 * 3 + 6) and out['tokens'].shape == (6, 4, 3)
  crops = regions.crop_images(images, boxes, 8)
  for r in range(3):
    quadrants = np.asarray(encode(crops[:, r])['tokens']).reshape(2, -1)
    np.testing.assert_allclose(np.asarray(feats)[:, r, :12], quadrants, atol=1e-6)
  np.testing.assert_allclose(np.asarray(feats)[:, :, 12:], regions.box_numbers(boxes), atol=1e-7)
  # The whole-image box gives the image's own quadrants.
  np.testing.assert_allclose(np.asarray(feats)[:, 2, :12],
                             np.asarray(encode(images)['tokens']).reshape(2, -1), atol=1e-6)


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
