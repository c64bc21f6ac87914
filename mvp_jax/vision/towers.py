"""SigLIP / SigLIP 2 towers as pure Linen modules (config.py gives the sizes).

Vision: stride-p patch convolution (or, for towers trained from scratch, a convolutional stem:
config.VisionConfig.stem), learned position embedding (resampled to the input grid,
posemb.py), pre-LN ViT encoder, final LayerNorm, multi-head attention pooling (MAP head).
Text: token + position embedding, the same pre-LN encoder, final LayerNorm, the last token's
state through a dense head (texts are padded with EOS to the position table's length).
Both follow `transformers`' SiglipVisionModel / SiglipTextModel (and Siglip2*): LayerNorm eps
1e-6, tanh-GELU, softmax in float32, attention scale head_dim**-0.5.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `length`);
parameters are float32, compute runs in `config.dtype`.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import layers
from mvp_jax.vision import posemb
from mvp_jax.vision.config import SiglipConfig, TextConfig, VisionConfig

Array = jax.Array
MASK_VALUE = -1e9


def _init(axes, init=nn.initializers.xavier_uniform()):
  return nn.with_logical_partitioning(init, axes)


def _flat_xavier(num_in: int):
  """Xavier-uniform of the kernel flattened to [prod(in dims), prod(out dims)], reshaped: the
  values DenseGeneral draws. Attention uses nn.Einsum, whose kernel is the real multi-dim array,
  so its logical axis names also hold when it is initialised under sharding rules."""
  def init(rng, shape, dtype=jnp.float32):
    flat = (int(np.prod(shape[:num_in])), int(np.prod(shape[num_in:])))
    return nn.initializers.xavier_uniform()(rng, flat, dtype).reshape(shape)
  return init


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _layer_norm(eps: float, dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                              ('embed',)),
                      bias_init=_zeros(('embed',)))


class Attention(nn.Module):
  """Multi-head attention of queries [B, Q, D] over keys [B, K, D].

  bias: optional additive float [B, Q or 1, K] (or [B, 1, 1, K] style broadcastable to
  [B, H, Q, K] after a head axis is inserted); -1e9 masks a key.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: Array, keys: Array, bias: Optional[Array] = None) -> Array:
    width = queries.shape[-1]
    head_dim = width // self.num_heads

    def project(name, x):
      return nn.Einsum((width, self.num_heads, head_dim), 'bqe,ehd->bqhd', dtype=self.dtype,
                       param_dtype=jnp.float32, name=name,
                       kernel_init=_init(('embed', 'heads', 'kv'), _flat_xavier(1)),
                       bias_init=_zeros(('heads', 'kv')))(x)

    q = project('query', queries) * jnp.asarray(head_dim ** -0.5, self.dtype)
    k, v = project('key', keys), project('value', keys)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias[:, None].astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return nn.Einsum((self.num_heads, head_dim, width), 'bqhd,hde->bqe', dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=_init(('heads', 'kv', 'embed'),
                                                                _flat_xavier(2)),
                     bias_init=_zeros(('embed',)), name='out')(out)


class Mlp(nn.Module):
  """fc1 -> tanh-GELU -> fc2."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32, name='fc1',
                 kernel_init=_init(('embed', 'mlp')), bias_init=_zeros(('mlp',)))(x)
    x = jax.nn.gelu(x, approximate=True)
    return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name='fc2',
                    kernel_init=_init(('mlp', 'embed')), bias_init=_zeros(('embed',)))(x)


class Block(nn.Module):
  """Pre-LN encoder block: x + attn(LN(x)), then + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None) -> Array:
    y = _layer_norm(self.eps, self.dtype, 'ln_0')(x)
    x = x + Attention(self.num_heads, self.dtype, name='attention')(y, y, bias)
    y = _layer_norm(self.eps, self.dtype, 'ln_1')(x)
    x = x + Mlp(self.mlp_dim, self.dtype, name='mlp')(y)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Encoder(nn.Module):
  """`depth` blocks; returns (output [B, L, D], hidden states: the input then each block's)."""
  depth: int
  num_heads: int
  mlp_dim: int
  eps: float
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, bias: Optional[Array] = None) -> tuple[Array, tuple]:
    hidden = [x]
    for i in range(self.depth):
      block = Block(self.num_heads, self.mlp_dim, self.eps, self.dtype, name=f'block_{i}')
      x = layers.ordered_remat(block, x, bias) if self.remat else block(x, bias)
      hidden.append(x)
    return x, tuple(hidden)


class MAPHead(nn.Module):
  """Multi-head attention pooling: one learned probe attends over the tokens.

  With `bias` [B, R, N] the probe is repeated R times, query r seeing the tokens through bias[:,
  r] (log pooling weights restrict it to a region); returns [B, D] without, [B, R, D] with.
  """
  num_heads: int
  mlp_dim: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, bias: Optional[Array] = None) -> Array:
    batch, _, width = tokens.shape
    probe = self.param('probe', _init((None, None, 'embed')), (1, 1, width), jnp.float32)
    num_queries = 1 if bias is None else bias.shape[1]
    queries = jnp.broadcast_to(probe.astype(self.dtype), (batch, num_queries, width))
    x = Attention(self.num_heads, self.dtype, name='attention')(queries, tokens, bias)
    y = _layer_norm(self.eps, self.dtype, 'ln')(x)
    x = x + Mlp(self.mlp_dim, self.dtype, name='mlp')(y)
    return x[:, 0] if bias is None else x


class ConvStem(nn.Module):
  """[B, H, W, C] -> [B, H/p, W/p, width]: log2(p) 3 x 3 stride-2 convolutions (SAME padding),
  each + LayerNorm + ReLU, widths width / 2**(n-1-k) (at least 8) for k = 0 .. n-1; the tower's
  1 x 1 `embedding` convolution follows (VisionConfig.stem)."""
  width: int
  patch_size: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    steps = self.patch_size.bit_length() - 1
    for k in range(steps):
      channels = max(8, self.width >> (steps - 1 - k))
      x = nn.Conv(channels, (3, 3), strides=(2, 2), padding='SAME', dtype=self.dtype,
                  param_dtype=jnp.float32, name=f'conv_{k}',
                  kernel_init=_init((None, None, None, None), nn.initializers.lecun_normal()),
                  bias_init=_zeros((None,)))(x)
      x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32,
                       name=f'ln_{k}',
                       scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                               (None,)),
                       bias_init=_zeros((None,)))(x)
      x = nn.relu(x)
    return x


def _dtype(config: SiglipConfig):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


class VisionTower(nn.Module):
  """SigLIP image tower.

  __call__(images float [B, H, W, C] in [-1, 1], H and W multiples of the patch size) -> dict:
    tokens  [B, N, D]   the final-LayerNorm patch states, row-major over the (H/p, W/p) grid
    pooled  [B, D]      the MAP-head image embedding (when config.vision.use_head)
    hidden  tuple of depth + 1 arrays [B, N, D]: the embedded patches, then each block's output
  `region_bias` [B, R, N] adds `regions` [B, R, D]: the MAP head pooled once per region
  (regions.pooling_bias builds it from pooling weights).
  """
  config: SiglipConfig

  @property
  def vision(self) -> VisionConfig:
    return self.config.vision

  @nn.compact
  def __call__(self, images: Array, region_bias: Optional[Array] = None) -> dict:
    cfg, dtype = self.vision, _dtype(self.config)
    p = cfg.patch_size
    if images.ndim != 4 or images.shape[-1] != cfg.num_channels or images.shape[1] % p or (
        images.shape[2] % p):
      raise ValueError(f'images must be [B, H, W, {cfg.num_channels}] with H and W multiples '
                       f'of the patch size {p}, got {images.shape}.')
    x = images.astype(dtype)
    if cfg.stem == 'conv':
      x = ConvStem(cfg.width, p, cfg.layer_norm_eps, dtype, name='conv_stem')(x)
      p = 1
    x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding='VALID', dtype=dtype,
                param_dtype=jnp.float32, name='embedding',
                kernel_init=_init((None, None, None, 'embed'), nn.initializers.lecun_normal()),
                bias_init=_zeros(('embed',)))(x)
    batch, rows, cols, width = x.shape
    x = x.reshape(batch, rows * cols, width)
    table = self.param('pos_embedding', _init(('length', 'embed'), nn.initializers.normal(
        width ** -0.5)), (cfg.posemb_grid[0] * cfg.posemb_grid[1], width), jnp.float32)
    x = x + posemb.resample(table, cfg.posemb_grid, (rows, cols), self.config.variant).astype(
        dtype)
    x, hidden = Encoder(cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, dtype,
                        self.config.remat, name='encoder')(x)
    tokens = _layer_norm(cfg.layer_norm_eps, dtype, 'encoder_norm')(x)
    out = {'tokens': tokens, 'hidden': hidden, 'grid': (rows, cols)}
    if cfg.use_head:
      head = MAPHead(cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, dtype, name='map_head')
      out['pooled'] = head(tokens)
      if region_bias is not None:
        out['regions'] = head(tokens, region_bias)
    elif region_bias is not None:
      raise ValueError('region embeddings need the MAP head (this checkpoint has none).')
    return out


class TextTower(nn.Module):
  """SigLIP text tower.

  __call__(ids int [B, L], L <= max_len, mask optional [B, L] (1 = token)) -> dict:
    tokens  [B, L, D]   final-LayerNorm states
    pooled  [B, P]      head(tokens[:, -1]) (the last position, EOS padding for SigLIP)
    hidden  tuple of depth + 1 arrays [B, L, D]
  """
  config: SiglipConfig

  @nn.compact
  def __call__(self, ids: Array, mask: Optional[Array] = None) -> dict:
    cfg, dtype = self.config.text, _dtype(self.config)
    if ids.ndim != 2 or ids.shape[1] > cfg.max_len:
      raise ValueError(f'ids must be [B, L] with L <= {cfg.max_len}, got {ids.shape}.')
    x = nn.Embed(cfg.vocab_size, cfg.width, dtype=dtype, param_dtype=jnp.float32,
                 embedding_init=_init(('vocab', 'embed'), nn.initializers.normal(0.02)),
                 name='token_embedding')(ids)
    table = self.param('pos_embedding', _init(('length', 'embed'), nn.initializers.normal(
        cfg.width ** -0.5)), (cfg.max_len, cfg.width), jnp.float32)
    x = x + table[:ids.shape[1]].astype(dtype)
    bias = None
    if mask is not None:
      bias = jnp.where(mask[:, None, :] > 0, 0.0, MASK_VALUE)
    x, hidden = Encoder(cfg.depth, cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, dtype,
                        self.config.remat, name='encoder')(x, bias)
    tokens = _layer_norm(cfg.layer_norm_eps, dtype, 'encoder_norm')(x)
    pooled = nn.Dense(cfg.projection_size, dtype=dtype, param_dtype=jnp.float32, name='head',
                      kernel_init=_init(('embed', 'mlp')), bias_init=_zeros(('mlp',)))(
                          tokens[:, -1])
    return {'tokens': tokens, 'pooled': pooled, 'hidden': hidden}


class Siglip(nn.Module):
  """Both towers plus the sigmoid-loss temperature `t` and bias `b` (logit = e^t cos + b).

  The two towers are the submodules `img` and `txt`; `embed_images` / `embed_texts` run one.
  A one-tower config has only `img` or `txt`, and no `t` / `b`.
  """
  config: SiglipConfig

  def setup(self):
    if self.config.vision is not None:
      self.img = VisionTower(self.config)
    if self.config.text is not None:
      self.txt = TextTower(self.config)
    if self.config.vision is not None and self.config.text is not None:
      self.t = self.param('t', _zeros((None,)), (1,), jnp.float32)
      self.b = self.param('b', _zeros((None,)), (1,), jnp.float32)

  def __call__(self, images: Optional[Array] = None,
               ids: Optional[Array] = None) -> tuple[Optional[dict], Optional[dict]]:
    """(vision outputs or None, text outputs or None) for whichever inputs are given."""
    return (None if images is None else self.img(images),
            None if ids is None else self.txt(ids))

  def embed_images(self, images: Array, region_bias: Optional[Array] = None) -> dict:
    return self.img(images, region_bias)

  def embed_texts(self, ids: Array, mask: Optional[Array] = None) -> dict:
    return self.txt(ids, mask)

  def logit_scale_bias(self) -> tuple[Array, Array]:
    """(e^t, b), each a float32 scalar."""
    return jnp.exp(self.t[0]), self.b[0]


def init_params(config: SiglipConfig, rng: jax.Array) -> dict:
  """Randomly initialised, unboxed parameters of `Siglip(config)` (float32)."""
  images = ids = None
  if config.vision is not None:
    images = jnp.zeros((1, *config.vision.image_size, config.vision.num_channels), jnp.float32)
  if config.text is not None:
    ids = jnp.zeros((1, config.text.max_len), jnp.int32)
  variables = jax.jit(lambda r: Siglip(config).init(r, images, ids))(rng)
  return nn.meta.unbox(variables['params'])


def param_shapes(config: SiglipConfig) -> dict:
  """The parameter tree of `Siglip(config)` as jax.ShapeDtypeStruct (nothing computed)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
