"""Architecture of a SigLIP / SigLIP 2 checkpoint: the two towers' sizes and options.

`variant` only changes how the learned position embeddings are resampled when the input grid
differs from the checkpoint's: 'siglip' as `transformers.SiglipVisionModel(...,
interpolate_pos_encoding=True)` (bicubic, align_corners=False), 'siglip2' as
`Siglip2VisionModel` (bilinear with antialias). SigLIP 2's linear patch embedding on patchified
pixels is the same map as a stride-p convolution, so both variants share one module.
"""

import dataclasses
from typing import Optional

VARIANTS = ('siglip', 'siglip2')
STEMS = ('patch', 'conv')


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The ViT image tower (pre-LN encoder, learned position embedding, MAP-head pooling).

  posemb_grid: (rows, cols) of the checkpoint's learned position embeddings.
  stem: 'patch' (SigLIP's stride-p convolution) or 'conv' (for towers trained from scratch:
    log2(p) 3 x 3 stride-2 convolutions, each followed by LayerNorm and ReLU, with widths doubling
    up to `width`, then a 1 x 1 convolution; "Early convolutions help transformers see better",
    Xiao et al. 2021). p must be a power of two for 'conv'; no SigLIP checkpoint has one.
  """
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  posemb_grid: tuple[int, int] = (14, 14)
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  use_head: bool = True
  stem: str = 'patch'

  def __post_init__(self):
    if self.stem not in STEMS:
      raise ValueError(f'vision stem must be one of {STEMS}, got {self.stem!r}.')
    if self.stem == 'conv' and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
      raise ValueError(f"the 'conv' stem needs a power-of-two patch size, got {self.patch_size}.")

  @property
  def image_size(self) -> tuple[int, int]:
    """The (height, width) the checkpoint was trained at."""
    return self.posemb_grid[0] * self.patch_size, self.posemb_grid[1] * self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The text tower (pre-LN encoder, final LN, last-token pooling, dense head).

  max_len: length of the learned position table; texts are padded to exactly this length.
  """
  vocab_size: int = 32000
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 64
  projection_size: int = 768
  layer_norm_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Both towers; `text` (`vision`) is None for a vision-only (text-only) checkpoint.

  dtype: compute dtype of the towers ('float32' or 'bfloat16'; parameters stay float32).
  remat: rematerialise each encoder block in the backward pass.
  """
  vision: Optional[VisionConfig] = VisionConfig()
  text: Optional[TextConfig] = TextConfig()
  variant: str = 'siglip'
  dtype: str = 'float32'
  remat: bool = False

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'variant must be one of {VARIANTS}, got {self.variant!r}.')
    if self.vision is None and self.text is None:
      raise ValueError('a SigLIP config needs at least one tower.')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    for name, tower in (('vision', self.vision), ('text', self.text)):
      if tower is not None and tower.width % tower.num_heads:
        raise ValueError(f'{name} width {tower.width} is not a multiple of num_heads '
                         f'{tower.num_heads}.')


def b16(image_size: int = 224, variant: str = 'siglip', **overrides) -> SiglipConfig:
  """SigLIP B/16 (google/siglip-base-patch16-<image_size>, webli_en_b16_<size>.npz)."""
  grid = image_size // 16
  return SiglipConfig(vision=VisionConfig(posemb_grid=(grid, grid)), text=TextConfig(),
                      variant=variant, **overrides)
