"""`config.model.vision`: where the region features come from.

  'features' (or None)  the batch's `img_feats` (offline features: VinVL, the SigLIP extractor,
                        the hand-made ShapesWorld extractor); today's path, unchanged.
  a mapping             a ViT tower inside the model (`mvp_jax/pixel_model.py`): the batch holds
                        `pixels` [B, S, S, 3] and `region_boxes` [B, R, 4] instead of `img_feats`,
                        and each region's feature is the tower's patch states pooled over its box
                        (`vision/regions.py`; over each of its bins x bins sub-boxes, concatenated,
                        with `bins` > 1) followed by the 6 box numbers, D = bins² width + 6.

Fields of the mapping (`PixelConfig`): tower 'siglip' (a SigLIP image tower, sizes from `size`,
weights from `checkpoint` through `weights.init_from`) or 'vit' (the same module at the sizes
given, from scratch, with SigLIP's patch stem or a convolutional one: `stem`,
vision/config.py); pooling 'bilinear' (RoIAlign, as the extractor's box mode) or 'area' (as its
grid mode: exact for grid cells); bins: sub-boxes per side of each region (1: one pooled state;
k: a k x k RoIAlign output kept in order, the layout inside the box, as a detector's box head
reads it); crops: crop and encode (R-CNN style) instead, each box of the image resampled to
`image_size` and put through the tower alone, its crop's tokens pooled (with `bins`): every region
at one scale and position, at R times the tower's cost (`vision/regions.py`); freeze /
lr_multiplier / weight_decay of the tower's own optimiser group (`mvp_jax/optim.py`); remat of
its blocks.

Tags stay precomputed at import (`tags='precomputed'`, the only choice): MCR masks and predicts
the tags, and that corruption and its labels are made in the input pipeline; tags recomputed in
the graph would need that corruption in the graph too, and would drift with a trained tower so
that the concept targets move under the model. Zero-shot tags need the SigLIP text tower, which
the training graph does not otherwise hold.
"""

import dataclasses
from typing import Any, Mapping, Optional

from mvp_jax.vision.config import SiglipConfig, VisionConfig

TOWERS = ('siglip', 'vit')
POOLINGS = ('bilinear', 'area')
# (width, depth, num_heads, mlp_dim, patch_size) of the SigLIP image towers.
SIZES = {'B/16': (768, 12, 12, 3072, 16), 'L/16': (1024, 24, 16, 4096, 16),
         'So400m/14': (1152, 27, 16, 4304, 14)}
NUM_BOX_DIMS = 6


@dataclasses.dataclass(frozen=True)
class PixelConfig:
  """The in-graph tower (module docstring). posemb_grid 0 = image_size // patch_size."""
  tower: str = 'vit'
  size: str = ''
  image_size: int = 224
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  posemb_grid: int = 0
  variant: str = 'siglip'
  stem: str = 'patch'
  pooling: str = 'bilinear'
  samples: int = 0
  bins: int = 1
  crops: bool = False
  grid_cells: int = 3
  freeze: bool = False
  lr_multiplier: float = 1.0
  weight_decay: float = -1.0
  remat: bool = False
  checkpoint: str = ''
  tags: str = 'precomputed'

  def __post_init__(self):
    if self.tower not in TOWERS:
      raise ValueError(f'model.vision.tower must be one of {TOWERS}, got {self.tower!r}.')
    if self.size:
      if self.size not in SIZES:
        raise ValueError(f'model.vision.size must be one of {sorted(SIZES)}, got {self.size!r}.')
      for name, value in zip(('width', 'depth', 'num_heads', 'mlp_dim', 'patch_size'),
                             SIZES[self.size]):
        object.__setattr__(self, name, value)
    if self.stem != 'patch' and self.tower == 'siglip':
      raise ValueError(f"model.vision.stem {self.stem!r} is for tower 'vit' (from scratch): a "
                       "SigLIP checkpoint's tower has the 'patch' stem.")
    if self.pooling not in POOLINGS:
      raise ValueError(f'model.vision.pooling must be one of {POOLINGS}, got {self.pooling!r}.')
    if not isinstance(self.crops, bool):
      raise ValueError(f'model.vision.crops must be True or False, got {self.crops!r}.')
    if not isinstance(self.bins, int) or self.bins < 1:
      raise ValueError(f'model.vision.bins must be an int >= 1 (sub-boxes per side of a region), '
                       f'got {self.bins!r}.')
    if self.tags != 'precomputed':
      raise ValueError(f"model.vision.tags must be 'precomputed' (tags come with the record; "
                       f"see mvp_jax/vision/pixel_config.py for why), got {self.tags!r}.")
    if self.image_size % self.patch_size:
      raise ValueError(f'model.vision.image_size {self.image_size} is not a multiple of the '
                       f'patch size {self.patch_size}.')
    if self.width % self.num_heads:
      raise ValueError(f'model.vision.width {self.width} is not a multiple of num_heads '
                       f'{self.num_heads}.')
    if self.lr_multiplier < 0:
      raise ValueError(f'model.vision.lr_multiplier must be >= 0, got {self.lr_multiplier}.')

  @property
  def feature_dim(self) -> int:
    """Width of one region feature: bins² pooled tower states + 6 box numbers."""
    return self.bins * self.bins * self.width + NUM_BOX_DIMS

  def siglip_config(self, dtype: str = 'float32') -> SiglipConfig:
    """The vision-only SigLIP config of the tower (no MAP head: regions are pooled states)."""
    grid = self.posemb_grid or self.image_size // self.patch_size
    vision = VisionConfig(width=self.width, depth=self.depth, num_heads=self.num_heads,
                          mlp_dim=self.mlp_dim, patch_size=self.patch_size,
                          posemb_grid=(grid, grid), use_head=False, stem=self.stem)
    return SiglipConfig(vision=vision, text=None, variant=self.variant, dtype=dtype,
                        remat=self.remat)


def from_value(value: Any) -> Optional[PixelConfig]:
  """None for 'features' / None / {}; a PixelConfig for a mapping (unknown keys are errors)."""
  if value is None or value == 'features' or (isinstance(value, Mapping) and not value):
    return None
  if isinstance(value, PixelConfig):
    return value
  if hasattr(value, 'to_dict'):  # an ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, str):
    raise ValueError(f"model.vision must be 'features' or a mapping of PixelConfig fields, got "
                     f'{value!r}.')
  values = dict(value)
  known = {f.name for f in dataclasses.fields(PixelConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f'Unknown model.vision keys {unknown}; known keys: {sorted(known)}.')
  return PixelConfig(**values)
