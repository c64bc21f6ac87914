"""A fixed, deterministic pixel -> region-feature extractor (a stand-in for a VinVL detector).

`extract_region_features` turns boxes on an RGB image into VinVL-shaped rows: appearance features
followed by the 6 normalised box dims of spec §5.1. Nothing is learned and no label is read, so a
model trained on these features has to learn colours and shapes from pixels.

Raw appearance descriptor of one box (sampled on a SAMPLES x SAMPLES lattice of pixel centres over
the box, i.e. the crop resized with nearest-pixel sampling):
  colour grid      GRID x GRID x 3   mean RGB of each cell of the resized crop, in [0, 1]
  colour moments   6                 mean and standard deviation of R, G, B over the cells
  colour histogram 27                fraction of samples in each 3x3x3 RGB bin
  silhouette       GRID x GRID       fraction of each cell whose colour differs (distance > 0.15)
                                     from the mean colour of the crop's border
  edges            16                squared derivative of the grey image (forward differences)
                                     in 2x2 quadrants x 4 directions (x, y, 2 diagonals)
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
_STEPS = (np.arange(SAMPLES, dtype=np.float32) + 0.5) / SAMPLES  # sample points within a box
_TO_UNIT = np.arange(256, dtype=np.float32) / 255  # uint8 -> [0, 1] lookup table
_SILHOUETTE_THRESHOLD = 0.15


@functools.lru_cache(maxsize=8)
def _projection_transposed(out_dim: int) -> np.ndarray:
  """Fixed float32 [out_dim, RAW_DIM] projection (transposed); identity when out_dim == RAW_DIM.

  Stored transposed because `P.T @ raw.T` with few rows stays fast when other processes compete
  for the cores (BLAS threads make `raw @ P` up to 10x slower then).
  """
  if out_dim == RAW_DIM:
    return np.eye(RAW_DIM, dtype=np.float32)
  rng = np.random.default_rng(_PROJECTION_SEED)
  projection = rng.standard_normal((RAW_DIM, out_dim)) / np.sqrt(RAW_DIM)
  return np.ascontiguousarray(projection.T, dtype=np.float32)


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
  check_boxes(boxes, *image.shape[:2])


def check_boxes(boxes: np.ndarray, height: int, width: int) -> None:
  """Raises ValueError naming the first pixel box [N, 4] that is empty or outside the image."""
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'boxes must be [N, 4] (x1, y1, x2, y2), got shape {boxes.shape}.')
  eps = 1e-3
  for x1, y1, x2, y2 in boxes.tolist():
    if not (x1 >= -eps and y1 >= -eps and x2 <= width + eps and y2 <= height + eps):
      raise ValueError(f'box {[x1, y1, x2, y2]} lies outside the image of (height, width) '
                       f'({height}, {width}), or is not finite.')
    if not (x2 > x1 and y2 > y1):
      raise ValueError(f'box {[x1, y1, x2, y2]} is empty (need x2 > x1 and y2 > y1).')


# [x1, y1, x2, y2] @ _BOX_MIX = [x1, y1, x2, y2, x2 - x1, y2 - y1].
_BOX_MIX = np.array([[1, 0, 0, 0, -1, 0], [0, 1, 0, 0, 0, -1], [0, 0, 1, 0, 1, 0],
                     [0, 0, 0, 1, 0, 1]], np.float32)


def box_features(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """VinVL box dims float32 [N, 6]: [x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h]."""
  scale = np.array([1 / width, 1 / height] * 3, np.float32)
  return (np.asarray(boxes, np.float32) @ _BOX_MIX) * scale


def _pool_matrices(cells: int) -> tuple:
  """Averaging matrices rows [cells, S] and cols [C S, C cells] (per channel, for C = 3 and 4) so
  that rows @ crop[S, C S] @ cols averages a [S, S, C] crop into [cells, cells, C] blocks."""
  rows = np.repeat(np.eye(cells, dtype=np.float32), SAMPLES // cells, axis=1) * (cells / SAMPLES)
  return (rows, np.kron(rows.T, np.eye(3, dtype=np.float32)),
          np.kron(rows.T, np.eye(4, dtype=np.float32)))


_CELL_ROWS, _CELL_COLS3, _ = _pool_matrices(GRID)
_QUADRANT_ROWS, _, _QUADRANT_COLS4 = _pool_matrices(2)
_CELL_MEAN = np.full(GRID * GRID, 1 / (GRID * GRID), np.float32)
_BORDER_MEAN = np.zeros((SAMPLES, SAMPLES), np.float32)
_BORDER_MEAN[[0, -1]] = _BORDER_MEAN[:, [0, -1]] = 1 / (4 * SAMPLES - 4)
_BORDER_MEAN = _BORDER_MEAN.reshape(-1)
_BIN_WEIGHTS = np.array([9, 3, 1], np.float32)
# Directional derivatives along x, y and the two diagonals from (d/dx, d/dy).
_DIRECTIONS = np.array([[1, 0, 0.5 ** 0.5, 0.5 ** 0.5], [0, 1, 0.5 ** 0.5, -(0.5 ** 0.5)]],
                       np.float32)


def _image_maps(image: np.ndarray) -> tuple:
  """Per-pixel maps shared by all boxes of an image.

  Returns:
    rgb: float32 [H*W, 3] in [0, 1].
    grads: float32 [H*W, 2], forward differences of the grey image along x and y (0 on the last
      column / row).
  """
  height, width = image.shape[:2]
  rgb = image.astype(np.float32)
  rgb *= 1 / 255
  grey = rgb @ np.full(3, 1 / 3, np.float32)  # [H, W]
  grads = np.zeros((height, width, 2), np.float32)
  grads[:, :-1, 0] = grey[:, 1:] - grey[:, :-1]
  grads[:-1, :, 1] = grey[1:] - grey[:-1]
  return rgb.reshape(-1, 3), grads.reshape(-1, 2)


def _appearance(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Raw descriptor float32 [N, RAW_DIM] of each box (see the module docstring).

  Written with few numpy calls, mostly small matmuls: for small images the per-call overhead
  dominates.
  """
  n = boxes.shape[0]
  height, width = image.shape[:2]
  corners = boxes.reshape(n, 2, 2)  # [N, (x1 y1 | x2 y2), (x | y)]
  coords = corners[:, 0, :, None] + (corners[:, 1, :, None] - corners[:, 0, :, None]) * _STEPS
  coords = np.minimum(coords.astype(np.int32), np.array([[width - 1], [height - 1]]))  # [N, 2, S]
  flat_index = coords[:, 1, :, None] * width + coords[:, 0, None, :]  # [N, S, S]
  rgb, grads = _image_maps(image)
  crops = rgb[flat_index].reshape(n, SAMPLES, 3 * SAMPLES)  # [N, S, S*3]

  cells = (_CELL_ROWS @ crops @ _CELL_COLS3).reshape(n, GRID * GRID, 3)
  mean = _CELL_MEAN @ cells  # [N, 3]
  std = np.sqrt(np.maximum(_CELL_MEAN @ (cells * cells) - mean * mean, 0.0))

  flat = crops.reshape(n, SAMPLES * SAMPLES, 3)
  bins = (np.floor(flat * 2.9999) @ _BIN_WEIGHTS).astype(np.int64) + 27 * np.arange(n)[:, None]
  histogram = np.bincount(bins.ravel(), minlength=27 * n).reshape(n, 27)
  histogram = histogram.astype(np.float32) * (1 / (SAMPLES * SAMPLES))

  border = _BORDER_MEAN @ flat  # [N, 3]
  diff = flat - border[:, None, :]
  far = np.einsum('npc,npc->np', diff, diff) > _SILHOUETTE_THRESHOLD ** 2
  silhouette = _CELL_ROWS @ far.reshape(n, SAMPLES, SAMPLES).astype(np.float32) @ _CELL_ROWS.T

  energies = np.square(grads[flat_index] @ _DIRECTIONS).reshape(n, SAMPLES, 4 * SAMPLES)
  edges = _QUADRANT_ROWS @ energies @ _QUADRANT_COLS4  # [N, 2, 2 * 4]
  return np.concatenate([cells.reshape(n, -1), mean, std, histogram, silhouette.reshape(n, -1),
                         edges.reshape(n, -1)], axis=1)


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
  raw = _appearance(image, boxes)  # [N, RAW_DIM]
  out[:, :appearance_dim] = (_projection_transposed(appearance_dim) @ raw.T).T
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
