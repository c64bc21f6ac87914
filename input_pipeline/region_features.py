"""A fixed, deterministic pixel -> region-feature extractor (a stand-in for a VinVL detector).

`extract_region_features` turns boxes on an RGB image into VinVL-shaped rows: appearance features
followed by the 6 normalised box dims of spec §5.1. Nothing is learned and no label is read, so a
model trained on these features has to learn colours and shapes from pixels.

Raw appearance descriptor of one box (sampled on a SAMPLES x SAMPLES lattice of pixel centres over
the box, i.e. the crop resized with nearest-pixel sampling):
  colour grid      GRID x GRID x 3   mean RGB of each cell of the resized crop, in [0, 1]
  colour moments   6                 mean and standard deviation of R, G, B
  colour histogram 27                fraction of samples in each 3x3x3 RGB bin
  silhouette       GRID x GRID       fraction of each cell that differs from the crop's border colour
  edges            16                gradient energy in 4 orientations x 2x2 quadrants
The raw descriptor (305 dims) is mapped to feature_dim - 6 dims by a fixed seeded Gaussian random
projection (identity when the sizes match).
"""

import functools

import numpy as np

from input_pipeline import features

GRID = 8
SAMPLES = 2 * GRID
RAW_DIM = GRID * GRID * 3 + 6 + 27 + GRID * GRID + 16
_PROJECTION_SEED = 20240605
_SILHOUETTE_THRESHOLD = 0.15


@functools.lru_cache(maxsize=8)
def _projection(out_dim: int) -> np.ndarray:
  """Fixed float32 [RAW_DIM, out_dim] projection; identity when out_dim == RAW_DIM."""
  if out_dim == RAW_DIM:
    return np.eye(RAW_DIM, dtype=np.float32)
  rng = np.random.default_rng(_PROJECTION_SEED)
  return (rng.standard_normal((RAW_DIM, out_dim)) / np.sqrt(RAW_DIM)).astype(np.float32)


def _check_inputs(image: np.ndarray, boxes: np.ndarray, feature_dim: int) -> None:
  if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'image must be a numpy array [H, W, 3], got shape {np.shape(image)}.')
  if image.dtype != np.uint8:
    raise ValueError(f'image must be uint8, got {image.dtype}.')
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f'image is empty: {image.shape}.')
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'boxes must be [N, 4] (x1, y1, x2, y2), got shape {boxes.shape}.')
  if not isinstance(feature_dim, (int, np.integer)) or feature_dim < features.NUM_BOX_DIMS + 1:
    raise ValueError(f'feature_dim must be an int >= {features.NUM_BOX_DIMS + 1} '
                     f'(appearance + {features.NUM_BOX_DIMS} box dims), got {feature_dim!r}.')
  height, width = image.shape[:2]
  if not np.all(np.isfinite(boxes)):
    raise ValueError('boxes contain NaN or Inf.')
  eps = 1e-3
  outside = ((boxes[:, 0] < -eps) | (boxes[:, 1] < -eps) | (boxes[:, 2] > width + eps) |
             (boxes[:, 3] > height + eps))
  if outside.any():
    raise ValueError(f'boxes {boxes[outside].tolist()} lie outside the image of (height, width) '
                     f'({height}, {width}).')
  empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
  if empty.any():
    raise ValueError(f'boxes {boxes[empty].tolist()} are empty (need x2 > x1 and y2 > y1).')


def box_features(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """VinVL box dims float32 [N, 6]: [x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h]."""
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  return np.stack([x1 / width, y1 / height, x2 / width, y2 / height,
                   (x2 - x1) / width, (y2 - y1) / height], axis=1).astype(np.float32)


def _appearance(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Raw descriptor float32 [N, RAW_DIM] of each box (see the module docstring)."""
  n = boxes.shape[0]
  height, width = image.shape[:2]
  steps = (np.arange(SAMPLES, dtype=np.float32) + 0.5) / SAMPLES
  xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # [N, S]
  ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
  xi = np.clip(xs.astype(np.int32), 0, width - 1)
  yi = np.clip(ys.astype(np.int32), 0, height - 1)
  crops = image[yi[:, :, None], xi[:, None, :]].astype(np.float32) * (1 / 255)  # [N, S, S, 3]

  cells = crops.reshape(n, GRID, 2, GRID, 2, 3).mean(axis=(2, 4))  # [N, G, G, 3]
  flat = crops.reshape(n, SAMPLES * SAMPLES, 3)
  moments = np.concatenate([flat.mean(1), flat.std(1)], axis=1)  # [N, 6]
  bins = np.minimum((flat * 3).astype(np.int32), 2)
  bin_index = bins[..., 0] * 9 + bins[..., 1] * 3 + bins[..., 2]  # [N, S*S]
  histogram = (bin_index[:, :, None] == np.arange(27)).mean(1, dtype=np.float32)  # [N, 27]

  border = np.concatenate([crops[:, 0], crops[:, -1], crops[:, 1:-1, 0], crops[:, 1:-1, -1]],
                          axis=1).mean(1)  # [N, 3]
  distance = np.sqrt(((crops - border[:, None, None, :]) ** 2).sum(-1))  # [N, S, S]
  silhouette = (distance > _SILHOUETTE_THRESHOLD).astype(np.float32)
  silhouette = silhouette.reshape(n, GRID, 2, GRID, 2).mean(axis=(2, 4))  # [N, G, G]

  grey = crops.mean(-1)  # [N, S, S]
  gx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
  gy = grey[:, 1:, :-1] - grey[:, :-1, :-1]  # both [N, S-1, S-1]
  half = (SAMPLES - 1) // 2
  energies = [gx * gx, gy * gy, 0.5 * (gx + gy) ** 2, 0.5 * (gx - gy) ** 2]
  edges = np.stack([e[:, :2 * half, :2 * half].reshape(n, 2, half, 2, half).mean(axis=(2, 4))
                    for e in energies], axis=-1).reshape(n, 16)
  return np.concatenate([cells.reshape(n, -1), moments, histogram,
                         silhouette.reshape(n, -1), edges], axis=1).astype(np.float32)


def extract_region_features(image: np.ndarray, boxes, feature_dim: int) -> np.ndarray:
  """Region features float32 [N, feature_dim] of `boxes` on `image`.

  Args:
    image: uint8 [H, W, 3] RGB image.
    boxes: [N, 4] (x1, y1, x2, y2) in pixels, inside the image, non-empty.
    feature_dim: width of a row, >= 7 (2054 for VinVL): feature_dim - 6 appearance dims followed by
      the 6 box dims of `box_features`.

  Identical crops at the same box give identical rows; the mapping is fixed across runs.
  """
  boxes = np.asarray(boxes, dtype=np.float32)
  if boxes.ndim == 1 and boxes.size == 0:
    boxes = boxes.reshape(0, 4)
  _check_inputs(image, boxes, feature_dim)
  height, width = image.shape[:2]
  out = np.empty((boxes.shape[0], feature_dim), np.float32)
  if boxes.shape[0] == 0:
    return out
  appearance_dim = feature_dim - features.NUM_BOX_DIMS
  out[:, :appearance_dim] = _appearance(image, boxes) @ _projection(appearance_dim)
  out[:, appearance_dim:] = box_features(boxes, height, width)
  return out


def grid_boxes(height: int, width: int, grid=4) -> np.ndarray:
  """Fixed regions float32 [rows * cols + 1, 4] for images without detections.

  The `grid` (an int or (rows, cols)) cells in row-major order, then the whole image.
  """
  rows, cols = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
  if rows < 1 or cols < 1 or height < 1 or width < 1:
    raise ValueError(f'Need a positive grid and image size, got grid {grid}, size '
                     f'({height}, {width}).')
  ys = np.linspace(0.0, height, rows + 1, dtype=np.float32)
  xs = np.linspace(0.0, width, cols + 1, dtype=np.float32)
  cells = [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]
  cells.append((0.0, 0.0, float(width), float(height)))
  return np.asarray(cells, np.float32)
