"""Batched, device-sharded region extraction with a SigLIP vision tower.

  extractor = RegionExtractor(config, params, regions='grid', grid_cells=7, batch_size=32,
                              label_embeddings=embed_labels(config, params, tokenizer, labels))
  feats, probs = extractor(pixels uint8 [b, S, S, 3], boxes float [b, R, 4] normalised or None)

feats float32 [b, R, bins² width + 6]: the final-LayerNorm patch states pooled over each region
(regions.py: grid cells by area, boxes by bilinear RoIAlign; over its bins x bins sub-boxes,
concatenated, with `bins` > 1, as `model.vision.bins`; with `crops`, each box resampled to the
tower's input and its crop's tokens pooled, R times the tower's cost, as `model.vision.crops`),
then VinVL's 6 box numbers.
probs float32 [b, R, L]: each region's zero-shot label probabilities (tags.py), the MAP head
attending to the region's patches with its pooling weights (with `crops`: the MAP head on the
region's crop); None without label embeddings.
Grid mode's regions are the grid_cells x grid_cells cells, row-major, then the whole image
(7 x 7 + 1 = 50 for MVPTR's base R). The batch is split over `devices` (default: this host's),
the parameters replicated; one compiled program serves every batch (inputs padded to batch_size).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvp_jax.vision import regions as regions_lib
from mvp_jax.vision import tags as tags_lib
from mvp_jax.vision import towers
from mvp_jax.vision.config import SiglipConfig

REGION_MODES = ('grid', 'boxes')


def embed_labels(config: SiglipConfig, params: dict, tokenizer, labels: Sequence[str],
                 templates: Sequence[str] = tags_lib.DEFAULT_TEMPLATES,
                 batch_size: int = 256) -> np.ndarray:
  """Unit label embeddings float32 [L, P] from the checkpoint's text tower."""
  if config.text is None or 'txt' not in params:
    raise ValueError('zero-shot tags need a checkpoint with a text tower (a SiglipModel, not a '
                     'SiglipVisionModel); pass no labels to extract features only.')
  tower = towers.TextTower(config)
  apply = jax.jit(lambda p, ids: tower.apply({'params': p}, ids)['pooled'])

  def embed(ids):
    n = len(ids)
    padded = np.concatenate([ids, np.repeat(ids[-1:], batch_size - n, 0)]) if n < batch_size \
        else ids
    return np.asarray(apply(params['txt'], jnp.asarray(padded)))[:n]

  return tags_lib.label_embeddings(embed, tokenizer, labels, templates, batch_size)


class RegionExtractor:
  """See the module docstring. image_size: side S of the square input (default: the
  checkpoint's); must be a multiple of the patch size."""

  def __init__(self, config: SiglipConfig, params: dict, *, regions: str = 'grid',
               grid_cells: int = 7, samples: int = 0, bins: int = 1, crops: bool = False,
               image_size: Optional[int] = None,
               batch_size: int = 32, label_embeddings: Optional[np.ndarray] = None,
               devices: Optional[Sequence[jax.Device]] = None):
    if regions not in REGION_MODES:
      raise ValueError(f'regions must be one of {REGION_MODES}, got {regions!r}.')
    vision = config.vision
    if vision is None:
      raise ValueError('region extraction needs a vision tower.')
    self.image_size = image_size or vision.image_size[0]
    if self.image_size % vision.patch_size:
      raise ValueError(f'image_size {self.image_size} is not a multiple of the patch size '
                       f'{vision.patch_size}.')
    devices = list(devices or jax.local_devices())
    if batch_size % len(devices):
      raise ValueError(f'batch_size {batch_size} must be a multiple of the {len(devices)} '
                       'devices it is split over.')
    if label_embeddings is not None and not vision.use_head:
      raise ValueError('zero-shot region tags need the MAP head; this tower has none.')
    self.config, self.regions, self.batch_size, self.bins = config, regions, batch_size, bins
    self.grid = (self.image_size // vision.patch_size,) * 2
    self.grid_boxes = regions_lib.grid_boxes(grid_cells)
    self.num_grid_regions = len(self.grid_boxes)
    mesh = Mesh(np.asarray(devices), ('data',))
    self._batch = NamedSharding(mesh, PartitionSpec('data'))
    replicated = NamedSharding(mesh, PartitionSpec())
    keep = {k: params[k] for k in ('img', 't', 'b') if k in params}
    self._params = jax.device_put(keep, replicated)
    self._labels = (None if label_embeddings is None else
                    jax.device_put(jnp.asarray(label_embeddings, jnp.float32), replicated))
    mode = 'area' if regions == 'grid' else 'bilinear'
    tower = towers.VisionTower(config)
    with_tags = self._labels is not None

    def run(params, labels, pixels, boxes):
      x = pixels.astype(jnp.float32) * (2 / 255) - 1  # SigLIP's [-1, 1] input range
      if crops:  # each box's own crop through the tower; its tag from the crop's MAP embedding
        feats, out = regions_lib.crop_region_features(
            lambda images: tower.apply({'params': params['img']}, images), x, boxes,
            self.image_size, mode, samples, bins)
        embeddings = out['pooled'].reshape(*boxes.shape[:2], -1) if with_tags else None
      else:
        weights = regions_lib.pooling_weights(boxes, self.grid, mode, samples)
        bias = regions_lib.pooling_bias(weights) if with_tags else None
        out = tower.apply({'params': params['img']}, x, bias)
        feats, _ = regions_lib.region_features(out['tokens'], self.grid, boxes, mode, samples,
                                               bins)
        embeddings = out.get('regions')
      if not with_tags:
        return feats, None
      probs = tags_lib.label_probs(embeddings, labels, jnp.exp(params['t'][0]), params['b'][0])
      return feats, probs

    self._run = jax.jit(run, out_shardings=(self._batch, self._batch if with_tags else None))

  @property
  def feature_dim(self) -> int:
    return self.bins * self.bins * self.config.vision.width + regions_lib.NUM_BOX_DIMS

  def __call__(self, pixels: np.ndarray,
               boxes: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """pixels uint8 [b, S, S, 3] (b <= batch_size); boxes [b, R, 4] normalised (box mode)."""
    n = len(pixels)
    size = self.image_size
    if pixels.shape[1:] != (size, size, 3) or n > self.batch_size or n == 0:
      raise ValueError(f'pixels must be [1..{self.batch_size}, {size}, {size}, 3], got '
                       f'{pixels.shape}.')
    if self.regions == 'grid':
      boxes = np.broadcast_to(self.grid_boxes, (n, *self.grid_boxes.shape))
    elif boxes is None or boxes.ndim != 3 or len(boxes) != n or boxes.shape[2] != 4:
      raise ValueError(f'box regions need boxes [{n}, R, 4], got '
                       f'{None if boxes is None else boxes.shape}.')
    pad = self.batch_size - n
    pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]), np.uint8)])
    boxes = np.concatenate([boxes, np.broadcast_to(np.float32([0, 0, 1, 1]),
                                                   (pad, *boxes.shape[1:]))]).astype(np.float32)
    feats, probs = self._run(self._params, self._labels,
                             jax.device_put(pixels, self._batch),
                             jax.device_put(boxes, self._batch))
    return np.asarray(feats)[:n], None if probs is None else np.asarray(probs)[:n]

  def lowered(self, boxes_per_image: int = 0):
    """The lowered program for one batch (for XLA cost analysis in benchmarks)."""
    r = boxes_per_image or self.num_grid_regions
    pixels = jax.ShapeDtypeStruct((self.batch_size, self.image_size, self.image_size, 3),
                                  jnp.uint8, sharding=self._batch)
    boxes = jax.ShapeDtypeStruct((self.batch_size, r, 4), jnp.float32, sharding=self._batch)
    return self._run.lower(self._params, self._labels, pixels, boxes)
