"""Region features from a ViT patch grid: grid cells and boxes, as pooling-weight matrices.

A region is a box in normalised image coordinates (x1, y1, x2, y2) in [0, 1]. Its feature is a
weighted mean of the patch states, weights [N] over the row-major (rows, cols) patch grid, and
its 6 box numbers are VinVL's [x1, y1, x2, y2, x2 - x1, y2 - y1] (normalised coordinates,
i.e. [x1/w, y1/h, x2/w, y2/h, bw/w, bh/h] of the box in pixels). Weights are separable: the
outer product of a row and a column profile.

  area      (grid cells) each patch weighs the area it shares with the box; a cell of a 2x2 block
            of patches is their plain mean, a cell cutting a patch takes that patch in part.
  bilinear  (boxes; RoIAlign, aligned=True, one output bin) the mean of `samples` x `samples`
            bilinear samples of the patch grid at the box's sample points; patch centres sit at
            ((i + 0.5) / cols, (j + 0.5) / rows) and points beyond the outer centres take the edge
            patch (border clamp).
Everything is jnp and jits; shapes: boxes [B, R, 4] -> weights [B, R, N] -> features [B, R, D].

`bins` > 1 keeps the layout inside a box, as a detector's RoIAlign to a k x k output does: the
box is cut into bins x bins equal sub-boxes (row-major, `bin_boxes`), each pooled as above, and
the region's feature is their states concatenated ([B, R, bins * bins * D]); with area pooling
their mean is the whole box's feature.

Crop and encode (`crop_region_features`, R-CNN style, R times the encoder's cost) instead
resamples each box of the *image* to the encoder's input and pools the crop's own tokens: every
region is seen at the same scale and position, as the hand-made extractor's silhouette sees it.
"""

import jax
import jax.numpy as jnp
import numpy as np

NUM_BOX_DIMS = 6
MASK_VALUE = -1e9


def grid_boxes(cells: int) -> np.ndarray:
  """float32 [cells * cells + 1, 4]: the cells row-major (top-left first), then the whole image."""
  edges = np.linspace(0.0, 1.0, cells + 1)
  boxes = [(edges[c], edges[r], edges[c + 1], edges[r + 1])
           for r in range(cells) for c in range(cells)]
  return np.asarray(boxes + [(0.0, 0.0, 1.0, 1.0)], np.float32)


def box_numbers(boxes: jax.Array) -> jax.Array:
  """VinVL's 6 box numbers [..., 6] of normalised boxes [..., 4]."""
  return jnp.concatenate([boxes, boxes[..., 2:] - boxes[..., :2]], axis=-1)


def normalise_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pixel boxes [R, 4] (x1, y1, x2, y2) -> normalised, clipped to the image.

  Raises ValueError naming the box when it is not finite or empty after clipping.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scale = np.array([width, height, width, height], np.float64)
  out = np.clip(boxes / scale, 0.0, 1.0)
  for box, clipped in zip(boxes.tolist(), out):
    if not np.all(np.isfinite(box)) or clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
      raise ValueError(f'box {box} is empty inside the image of (height, width) '
                       f'({height}, {width}) or not finite.')
  return out.astype(np.float32)


def _area_profile(lo: jax.Array, hi: jax.Array, n: int) -> jax.Array:
  """[..., n]: overlap of [lo, hi] with each of n equal cells of [0, 1], normalised to sum 1."""
  left = jnp.arange(n, dtype=jnp.float32) / n
  overlap = jnp.clip(jnp.minimum(hi[..., None], left + 1 / n) - jnp.maximum(lo[..., None], left),
                     0.0, None)
  return overlap / jnp.maximum(overlap.sum(-1, keepdims=True), 1e-12)


def _bilinear_profile(lo: jax.Array, hi: jax.Array, n: int, samples: int) -> jax.Array:
  """[..., n]: mean over `samples` points in [lo, hi] of the linear-interpolation weights."""
  steps = (jnp.arange(samples, dtype=jnp.float32) + 0.5) / samples
  points = lo[..., None] + (hi - lo)[..., None] * steps  # [..., S]
  u = jnp.clip(points * n - 0.5, 0.0, n - 1.0)  # in units of patch centres
  tent = jnp.maximum(1.0 - jnp.abs(u[..., None] - jnp.arange(n, dtype=jnp.float32)), 0.0)
  return tent.mean(axis=-2)


def pooling_weights(boxes: jax.Array, grid: tuple[int, int], mode: str,
                    samples: int = 0) -> jax.Array:
  """Weights [..., R, rows * cols] (each row sums to 1) of normalised boxes [..., R, 4].

  mode: 'area' or 'bilinear'; samples: sample points per axis for 'bilinear' (0: as many as the
  longer grid side, i.e. at least one per patch a box spans).
  """
  rows, cols = grid
  boxes = boxes.astype(jnp.float32)
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  if mode == 'area':
    wy, wx = _area_profile(y1, y2, rows), _area_profile(x1, x2, cols)
  elif mode == 'bilinear':
    samples = samples or max(rows, cols)
    wy, wx = _bilinear_profile(y1, y2, rows, samples), _bilinear_profile(x1, x2, cols, samples)
  else:
    raise ValueError(f"pooling mode must be 'area' or 'bilinear', got {mode!r}.")
  return (wy[..., :, None] * wx[..., None, :]).reshape(*boxes.shape[:-1], rows * cols)


def pool(tokens: jax.Array, weights: jax.Array) -> jax.Array:
  """Region features [B, R, D] = weights [B, R, N] @ tokens [B, N, D] (in float32)."""
  return jnp.einsum('brn,bnd->brd', weights.astype(jnp.float32), tokens.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def pooling_bias(weights: jax.Array) -> jax.Array:
  """Attention bias [B, R, N] that makes the MAP head attend to a region by its weights.

  softmax(logits + log w) = w e^logits / sum(w e^logits): the head's attention restricted to the
  region's patches and weighted like its pooling; uniform weights give the plain MAP head.
  """
  return jnp.where(weights > 0, jnp.log(jnp.maximum(weights, 1e-30)), MASK_VALUE)


def crop_images(images: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
  """Crops [B, R, size, size, C] of images [B, H, W, C] at normalised boxes [B, R, 4]: each
  output pixel the bilinear sample (border clamp, RoIAlign's aligned=True, one sample per output
  pixel) at its centre inside the box; separable, so no [size², H W] weights are formed."""
  steps = jnp.arange(size, dtype=jnp.float32) / size
  boxes = boxes.astype(jnp.float32)
  x1, y1, x2, y2 = (boxes[..., i:i + 1] for i in range(4))
  wx = _bilinear_profile(x1 + (x2 - x1) * steps, x1 + (x2 - x1) * (steps + 1 / size),
                         images.shape[2], 1)  # [B, R, size, W]
  wy = _bilinear_profile(y1 + (y2 - y1) * steps, y1 + (y2 - y1) * (steps + 1 / size),
                         images.shape[1], 1)  # [B, R, size, H]
  return jnp.einsum('brih,bhwc,brjw->brijc', wy, images.astype(jnp.float32), wx,
                    precision=jax.lax.Precision.HIGHEST)


def crop_region_features(encode, images: jax.Array, boxes: jax.Array, size: int, mode: str,
                         samples: int = 0, bins: int = 1) -> tuple[jax.Array, dict]:
  """Crop and encode (R-CNN style): (features [B, R, bins * bins * D + 6], the encoder's output
  on the crops, leading axis B * R).

  Each box of boxes [B, R, 4] is cut from images [B, H, W, C] and resampled to size x size
  (`crop_images`); `encode` maps crops [B * R, size, size, C] to a dict with 'tokens'
  [B * R, N, D] over its 'grid'; each crop's tokens are pooled over the whole crop (`mode`,
  `samples`, `bins` as `region_features`) and followed by the box's own 6 numbers.
  """
  batch, num_regions = boxes.shape[:2]
  crops = crop_images(images, boxes, size)
  out = encode(crops.reshape(batch * num_regions, size, size, images.shape[-1]))
  whole = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0, 1.0]), (batch * num_regions, 1, 4))
  pooled = pool_boxes(out['tokens'], out['grid'], whole, mode, samples, bins)
  pooled = pooled.reshape(batch, num_regions, -1)
  return jnp.concatenate([pooled, box_numbers(boxes.astype(jnp.float32))], -1), out


def bin_boxes(boxes: jax.Array, bins: int) -> jax.Array:
  """[..., R, bins * bins, 4]: each box [..., R, 4] cut into bins x bins equal sub-boxes,
  row-major (top-left, then along the top row)."""
  boxes = boxes.astype(jnp.float32)
  edges = jnp.arange(bins + 1, dtype=jnp.float32) / bins
  xs = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * edges  # [..., R, bins + 1]
  ys = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * edges
  row, col = np.divmod(np.arange(bins * bins), bins)
  return jnp.stack([xs[..., col], ys[..., row], xs[..., col + 1], ys[..., row + 1]], axis=-1)


def pool_boxes(tokens: jax.Array, grid: tuple[int, int], boxes: jax.Array, mode: str,
               samples: int = 0, bins: int = 1) -> jax.Array:
  """[B, R, bins * bins * D]: tokens [B, N, D] over the row-major `grid` pooled over each box
  of boxes [B, R, 4] (normalised), or over each of its bins x bins sub-boxes in order."""
  if bins == 1:
    return pool(tokens, pooling_weights(boxes, grid, mode, samples))
  batch, num_regions = boxes.shape[:2]
  sub = bin_boxes(boxes, bins).reshape(batch, num_regions * bins * bins, 4)
  return pool(tokens, pooling_weights(sub, grid, mode, samples)).reshape(batch, num_regions, -1)


def region_features(tokens: jax.Array, grid: tuple[int, int], boxes: jax.Array, mode: str,
                    samples: int = 0, bins: int = 1) -> tuple[jax.Array, jax.Array]:
  """(features [B, R, bins * bins * D + 6] = `pool_boxes` then the 6 box numbers,
  weights [B, R, N] of the whole boxes).

  tokens [B, N, D] over the row-major `grid`; boxes [B, R, 4] normalised; `bins` per side.
  """
  feats = jnp.concatenate([pool_boxes(tokens, grid, boxes, mode, samples, bins),
                           box_numbers(boxes.astype(jnp.float32))], -1)
  return feats, pooling_weights(boxes, grid, mode, samples)
