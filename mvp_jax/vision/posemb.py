"""Resampling a learned position-embedding grid to another patch grid.

Both resamplings are separable linear maps, built here as small numpy matrices (shapes are
static under jit) and applied as two contractions:
  'siglip'   torch `F.interpolate(mode='bicubic', align_corners=False)` (Keys cubic, a = -0.75,
             border taps clamped), what `SiglipVisionModel(interpolate_pos_encoding=True)` does;
  'siglip2'  torch `F.interpolate(mode='bilinear', align_corners=False, antialias=True)`, what
             `Siglip2VisionEmbeddings.resize_positional_embeddings` does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.75 at offsets x (float64)."""
  a, x = _CUBIC_A, np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(old: int, new: int) -> np.ndarray:
  """float32 [new, old]: torch's bicubic resize (align_corners=False) of a length-`old` axis."""
  out = np.zeros((new, old), np.float64)
  src = (np.arange(new) + 0.5) * (old / new) - 0.5
  base = np.floor(src)
  frac = src - base
  for tap in range(-1, 3):
    index = np.clip(base + tap, 0, old - 1).astype(np.int64)
    np.add.at(out, (np.arange(new), index), _cubic(frac - tap))
  return out.astype(np.float32)


@functools.lru_cache(maxsize=64)
def antialias_bilinear_matrix(old: int, new: int) -> np.ndarray:
  """float32 [new, old]: torch's bilinear resize with antialias (align_corners=False)."""
  scale = old / new
  support = max(scale, 1.0)
  center = (np.arange(new) + 0.5) * scale - 0.5
  weights = np.maximum(1 - np.abs(np.arange(old)[None, :] - center[:, None]) / support, 0.0)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resample(table: jax.Array, old_grid: tuple[int, int], new_grid: tuple[int, int],
             variant: str) -> jax.Array:
  """Position embeddings [old_rows * old_cols, D] -> [new_rows * new_cols, D] (row-major)."""
  old_grid, new_grid = tuple(old_grid), tuple(new_grid)
  if old_grid == new_grid:
    return table
  if variant == 'siglip':
    rows, cols = bicubic_matrix(old_grid[0], new_grid[0]), bicubic_matrix(old_grid[1], new_grid[1])
  elif variant == 'siglip2':
    rows = antialias_bilinear_matrix(old_grid[0], new_grid[0])
    cols = antialias_bilinear_matrix(old_grid[1], new_grid[1])
  else:
    raise ValueError(f'unknown position-embedding variant {variant!r}.')
  grid = table.reshape(old_grid[0], old_grid[1], -1)
  out = jnp.einsum('ia,jb,abd->ijd', rows, cols, grid.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape(new_grid[0] * new_grid[1], -1).astype(table.dtype)
