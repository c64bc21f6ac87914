"""Transformer building blocks of MVPTR: embeddings, post-LN BERT layers, encoders, heads.

Every parameter is declared with logical axis names (`vocab`, `embed`, `mlp`, `heads`, `kv`, ...)
and the main activations carry logical constraints, so the same modules run replicated,
data-parallel, FSDP or tensor-parallel depending only on the mesh rules (see `sharding.py`).
Parameter names follow the authors' PyTorch modules so the converter is a plain renaming.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvp_jax.config import ModelConfig

Array = jax.Array

# The reference code adds (1 - mask) * -10000 to the attention scores, not -inf (spec §1.4).
MASK_VALUE = -10000.0

# Logit of a vocabulary padding row (`ModelConfig.vocab_multiple`): no softmax, loss, accuracy or
# argmax ever picks it, and its gradient is zero.
MASKED_LOGIT = -1e9


# `ModelConfig.remat_policy` -> what `jax.checkpoint` keeps of a layer (None = nothing).
REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Dropout(nn.Dropout):
  """`nn.Dropout` whose mask bits come from the PRNG implementation `rng_impl`.

  'threefry' is `nn.Dropout` unchanged (the same masks as before). 'rbg' / 'unsafe_rbg' turn the
  module's threefry key (`make_rng('dropout')`, so the stream still follows the module path,
  the step and the seed) into a key of that implementation with 4 threefry words, and the mask
  bits then come from XLA's `RngBitGenerator`: deterministic for a given seed, program and
  backend (resume-exact), but a different stream from threefry and, per JAX, not guaranteed
  equal across backends, JAX versions or shardings. The class keeps the name `Dropout` so
  Flax's automatic module names (and so the threefry keys) are those of `nn.Dropout`.
  """
  rng_impl: str = 'threefry'

  def __call__(self, inputs, deterministic=None, rng=None):
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rng_impl == 'threefry' or deterministic or self.rate == 0.0:
      return super().__call__(inputs, deterministic, rng)
    rng = self.make_rng(self.rng_collection) if rng is None else rng
    key = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl=self.rng_impl)
    return super().__call__(inputs, deterministic, key)


def dropout(config: ModelConfig, rate: float) -> Dropout:
  """The dropout of every site in these layers, with the config's `dropout_rng`."""
  return Dropout(rate, rng_impl=config.dropout_rng)


def _dtype(config: ModelConfig):
  return jnp.bfloat16 if config.dtype == 'bfloat16' else jnp.float32


def _normal(config: ModelConfig, axes: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), axes)


def _padded_normal(config: ModelConfig, real_rows: int):
  """The normal initialiser of a ('vocab', 'embed') table whose rows >= real_rows are zero."""
  normal = nn.initializers.normal(config.initializer_range)

  def init(key, shape, dtype=jnp.float32):
    values = normal(key, shape, dtype)
    return jnp.where(jnp.arange(shape[0])[:, None] < real_rows, values, 0).astype(dtype)

  return nn.with_logical_partitioning(init, ('vocab', 'embed'))


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def constrain(x: Array, axes: Tuple[Optional[str], ...]) -> Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh / rules context)."""
  return nn.with_logical_constraint(x, axes)


def gelu(x: Array) -> Array:
  """Exact erf GELU, as `modeling_bert.gelu` (spec §1.1)."""
  return jax.nn.gelu(x, approximate=False)


def layer_norm(config: ModelConfig, name: Optional[str] = None) -> nn.LayerNorm:
  """BERT LayerNorm (biased variance, eps 1e-12) with logically partitioned scale and bias."""
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=_dtype(config), param_dtype=jnp.float32,
                      scale_init=_ones(('embed',)), bias_init=_zeros(('embed',)), name=name)


def dense(config: ModelConfig, features: int, axes: Tuple[Optional[str], Optional[str]],
          name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=_dtype(config), param_dtype=jnp.float32,
                  kernel_init=_normal(config, axes), bias_init=_zeros((axes[1],)), name=name)


class Embeddings(nn.Module):
  """Shared word + position + segment embeddings, LayerNorm and dropout (`bert.embeddings`).

  Text, phrase concepts (extra rows of the word table) and tags all use these tables; the tag
  stream restarts its positions at 0 (spec §1.3).
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    dtype = _dtype(cfg)
    # padded_vocab_size rows; the padding rows start at zero and no id reaches them.
    self.word_embeddings = nn.Embed(cfg.padded_vocab_size, cfg.hidden_size, dtype=dtype,
                                    param_dtype=jnp.float32,
                                    embedding_init=_padded_normal(cfg, cfg.vocab_size))
    self.position_embeddings = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                        dtype=dtype, param_dtype=jnp.float32,
                                        embedding_init=_normal(cfg, ('position', 'embed')))
    self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype,
                                          param_dtype=jnp.float32,
                                          embedding_init=_normal(cfg, ('segment', 'embed')))
    self.layernorm = layer_norm(cfg)
    self.dropout = dropout(cfg, cfg.dropout_rate)

  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    """[batch, length] ids and segments -> [batch, length, hidden]; positions 0..length-1."""
    length = input_ids.shape[1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f'Sequence length {length} exceeds max_position_embeddings '
                       f'{self.config.max_position_embeddings}.')
    positions = jnp.arange(length)[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(token_type_ids))
    x = self.layernorm(x)
    x = self.dropout(x, deterministic=deterministic)
    return constrain(x, ('batch', 'length', 'embed'))


class RegionEmbedding(nn.Module):
  """Region features -> hidden: Dense, optional LayerNorm (`bert.LayerNorm`), dropout (§1.3).

  Regions get no position or segment embedding and skip the embedding LayerNorm.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, img_feats: Array, deterministic: bool) -> Array:
    """[batch, regions, feature_dim] -> [batch, regions, hidden]."""
    cfg = self.config
    if img_feats.shape[-1] != cfg.region_feature_dim:
      raise ValueError(f'img_feats has feature dim {img_feats.shape[-1]}, the model expects '
                       f'region_feature_dim={cfg.region_feature_dim}.')
    x = dense(cfg, cfg.hidden_size, ('region_feature', 'embed'), 'img_embedding')(img_feats)
    if cfg.use_region_layernorm:
      x = layer_norm(cfg, 'img_layernorm')(x)
    x = dropout(cfg, cfg.dropout_rate)(x, deterministic=deterministic)
    return constrain(x, ('batch', 'length', 'embed'))


def attention_implementation(config: ModelConfig, query_length: int, key_length: int) -> str:
  """'cudnn' or 'xla' for `jax.nn.dot_product_attention` (see `ModelConfig`).

  'auto' picks cuDNN flash attention on a GPU in bfloat16 when its shape rules hold (head_dim a
  multiple of 8 and <= 128, even lengths with a bias), XLA elsewhere (CPU, TPU, float32).
  """
  if config.attention_implementation != 'auto':
    return config.attention_implementation
  cudnn_ok = (jax.default_backend() == 'gpu' and config.dtype == 'bfloat16'
              and config.head_dim % 8 == 0 and config.head_dim <= 128
              and query_length % 2 == 0 and key_length % 2 == 0)
  return 'cudnn' if cudnn_ok else 'xla'


class SelfAttention(nn.Module):
  """Multi-head self-attention with an additive key mask (`attention.self` + `output.dense`)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, key_mask: Array, deterministic: bool) -> Array:
    """x [batch, length, hidden], key_mask [batch, length] (1 = attend) -> [batch, length, hidden]."""
    cfg = self.config
    dtype = _dtype(cfg)

    def projection(name):
      # nn.Einsum (not DenseGeneral, whose kernel is flat [H, heads*head_dim] inside) so the
      # kernel really is [hidden, heads, head_dim] for the logical constraints.
      return nn.Einsum((cfg.hidden_size, cfg.num_heads, cfg.head_dim), 'blh,hnd->blnd',
                       dtype=dtype, param_dtype=jnp.float32,
                       kernel_init=_normal(cfg, ('embed', 'heads', 'kv')),
                       bias_init=_zeros(('heads', 'kv')), name=name)

    query = projection('query')(x)
    key = projection('key')(x)
    value = projection('value')(x)
    query = constrain(query, ('batch', 'length', 'heads', 'kv'))
    key = constrain(key, ('batch', 'length', 'heads', 'kv'))
    value = constrain(value, ('batch', 'length', 'heads', 'kv'))
    # The reference's additive mask, passed as a bias (a boolean mask would mean -inf).
    bias = (1.0 - key_mask[:, None, None, :].astype(jnp.float32)) * MASK_VALUE  # [B, 1, 1, S]
    if deterministic or cfg.attention_dropout_rate == 0.0:
      implementation = attention_implementation(cfg, query.shape[1], key.shape[1])
      if implementation == 'cudnn':  # cuDNN wants a [., ., T, S] bias in the input dtype
        bias = jnp.broadcast_to(bias, bias.shape[:2] + (query.shape[1], key.shape[1]))
      context = jax.nn.dot_product_attention(query, key, value, bias=bias.astype(dtype),
                                             implementation=implementation)
    else:  # the fused kernels have no attention dropout
      scores = jnp.einsum('bqhd,bkhd->bhqk', query, key) / jnp.sqrt(cfg.head_dim).astype(dtype)
      # Softmax in float32 keeps bfloat16 runs stable; float32 runs are unchanged.
      probs = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1).astype(dtype)
      probs = dropout(cfg, cfg.attention_dropout_rate)(probs, deterministic=deterministic)
      context = jnp.einsum('bhqk,bkhd->bqhd', probs, value)
    context = constrain(context, ('batch', 'length', 'heads', 'kv'))
    out = nn.Einsum((cfg.num_heads, cfg.head_dim, cfg.hidden_size), 'blnd,ndh->blh',
                    dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=_normal(cfg, ('heads', 'kv', 'embed')),
                    bias_init=_zeros(('embed',)), name='output')(context)
    return constrain(out, ('batch', 'length', 'embed'))


class TransformerLayer(nn.Module):
  """Post-LN BERT layer (spec §1.4): attention, residual + LN, GELU FFN, residual + LN."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, key_mask: Array, deterministic: bool) -> Array:
    """x [batch, length, hidden], key_mask [batch, length] -> [batch, length, hidden]."""
    cfg = self.config
    attended = SelfAttention(cfg, name='attention')(x, key_mask, deterministic)
    attended = dropout(cfg, cfg.dropout_rate)(attended, deterministic=deterministic)
    x = layer_norm(cfg, 'attention_layernorm')(attended + x)
    hidden = gelu(dense(cfg, cfg.mlp_dim, ('embed', 'mlp'), 'intermediate')(x))
    hidden = constrain(hidden, ('batch', 'length', 'mlp'))
    out = dense(cfg, cfg.hidden_size, ('mlp', 'embed'), 'output')(hidden)
    out = dropout(cfg, cfg.dropout_rate)(out, deterministic=deterministic)
    out = layer_norm(cfg, 'output_layernorm')(out + x)
    return constrain(out, ('batch', 'length', 'embed'))


class Encoder(nn.Module):
  """A stack of `num_layers` transformer layers (`txt_encoder`, `vis_encoder` or `mul_encoder`)."""
  config: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x: Array, key_mask: Array, deterministic: bool,
               return_layer: Optional[int] = None) -> Tuple[Array, Optional[Array]]:
    """Runs the stack.

    Args:
      x: [batch, length, hidden] input embeddings.
      key_mask: [batch, length], 1 on real tokens.
      deterministic: disables dropout.
      return_layer: 0-based index of a layer whose output is also returned (spec §10.3).

    Returns:
      ([batch, length, hidden] final output, [batch, length, hidden] output of `return_layer` or
      None).
    """
    if return_layer is not None and not 0 <= return_layer < self.num_layers:
      raise ValueError(f'return_layer {return_layer} outside [0, {self.num_layers}).')
    selected = None
    for index in range(self.num_layers):
      layer = TransformerLayer(self.config, name=f'layer_{index}')
      if self.config.remat:
        x = ordered_remat(layer, x, key_mask, policy=self.config.remat_policy,
                          deterministic=deterministic)
      else:
        x = layer(x, key_mask, deterministic)
      if index == return_layer:
        selected = x
    return x, selected


def ordered_remat(layer: nn.Module, *inputs: Optional[Array], policy: str = 'full',
                  **static) -> Array:
  """`layer(*inputs, **static)` rematerialised, recomputed only when its turn comes.

  A plain `jax.checkpoint` keeps the layer's inputs and recomputes the layer in the backward
  pass, but on XLA:CPU that saves nothing: the CPU pipeline expands `jax.checkpoint`'s
  optimisation barriers before it schedules, CSE then merges the recomputation into the forward
  pass, and the default scheduler (ordered for concurrency) keeps every layer's activations
  alive together; the temporaries equalled remat off. Here the backward pass of each layer first
  ties what it recomputes from (the saved activations, leading axis = batch, and the dropout
  key) to the cotangent of the layer's output, `saved + 0 * cotangent[b, 0, ...]` per example b
  (local to each data shard) and `key ^ 0`, a data dependence no pass can drop, so layer i is
  recomputed only once the gradient has reached it.
  The tie is exactly zero for a finite cotangent (a non-finite one makes the gradient
  non-finite, as it already was); outputs, gradients and dropout masks equal the plain layer's
  (`tests/test_perf_layers.py`). `inputs` are arrays (or None), the layer's output is one
  array, `policy` is a `REMAT_POLICIES` key, `static` are Python arguments (`deterministic`).
  The one remat of the MVPTR encoders and the SigLIP towers.
  """
  checkpointed = nn.remat(lambda module, *args: module(*args, **static),
                          policy=REMAT_POLICIES[policy])

  def forward(module, *args):
    return nn.vjp(checkpointed, module, *args)  # the pullback holds what remat saved

  def backward(pullback, cotangent):
    batch = cotangent.shape[0]
    # One zero per example, from that example's own cotangent: local to each data shard.
    tie = cotangent.reshape(batch, -1)[:, 0] * 0  # [batch]
    key_tie = jnp.any(tie != tie).astype(jnp.uint32)  # a scalar reduction, the only one

    def tied(saved):
      if jnp.issubdtype(saved.dtype, jnp.floating) and saved.shape[:1] == (batch,):
        return saved + tie.astype(saved.dtype).reshape((batch,) + (1,) * (saved.ndim - 1))
      if saved.dtype == jnp.uint32:  # raw PRNG key data
        return saved ^ key_tie
      return saved  # parameters: nothing recomputed from them alone is large

    return jax.tree_util.tree_map(tied, pullback)(cotangent)

  return nn.custom_vjp(checkpointed, forward_fn=forward, backward_fn=backward)(layer, *inputs)


class Pooler(nn.Module):
  """tanh(Dense(sequence[:, 0])) (`bert.pooler`)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, sequence: Array) -> Array:
    """[batch, length, hidden] -> [batch, hidden]."""
    cfg = self.config
    return jnp.tanh(dense(cfg, cfg.hidden_size, ('embed', 'embed_out'), 'dense')(sequence[:, 0]))


class PredictionHead(nn.Module):
  """BertLMPredictionHead with an untied decoder: Dense + GELU + LN, then x @ decoderᵀ + bias.

  `decoder` is stored like an embedding table, [num_outputs, hidden], as in PyTorch, so that it
  can be initialised as a copy of the word embeddings' first rows (spec §1.7). With
  `num_real < num_outputs` the rows from `num_real` on are vocabulary padding: their logits are
  `MASKED_LOGIT` (`ModelConfig.vocab_multiple`). `axis` is the logical name of the output axis
  ('vocab' for words, 'classes' for the VQA answers).
  """
  config: ModelConfig
  num_outputs: int
  num_real: Optional[int] = None
  axis: str = 'vocab'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., hidden] -> [..., num_outputs] logits (float32)."""
    cfg = self.config
    x = gelu(dense(cfg, cfg.hidden_size, ('embed', 'embed_out'), 'transform')(x))
    x = layer_norm(cfg, 'transform_layernorm')(x)
    decoder = self.param('decoder', _normal(cfg, (self.axis, 'embed')),
                         (self.num_outputs, cfg.hidden_size), jnp.float32)
    bias = self.param('bias', _zeros((self.axis,)), (self.num_outputs,), jnp.float32)
    logits = jnp.einsum('...h,vh->...v', x, decoder.astype(x.dtype))
    logits = logits.astype(jnp.float32) + bias
    if self.num_real is not None and self.num_real < self.num_outputs:
      logits = jnp.where(jnp.arange(self.num_outputs) < self.num_real, logits, MASKED_LOGIT)
    return logits
