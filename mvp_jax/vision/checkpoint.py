"""Loads SigLIP / SigLIP 2 weights into the towers of towers.py.

  config, params = checkpoint.load('google/siglip-base-patch16-224 folder' | 'webli_en_b16_224.npz')

Two on-disk layouts:
  Hugging Face  a folder with config.json and model.safetensors (or model.safetensors.index.json
                and its shards) of `transformers`' SiglipModel / SiglipVisionModel /
                SiglipTextModel / Siglip2Model / Siglip2VisionModel / Siglip2TextModel. One-tower
                models may carry a `vision_model.` / `text_model.` prefix or none.
  big_vision    the .npz of `big_vision.models.proj.image_text.two_towers` (flat '/'-joined
                names, optionally under `params/`): img/embedding, img/pos_embedding,
                img/Transformer/encoderblock_{i}/{LayerNorm_0,MultiHeadDotProductAttention_0,
                LayerNorm_1,MlpBlock_0/Dense_{0,1}}, img/Transformer/encoder_norm, img/MAPHead_0,
                txt/Embed_0, txt/pos_embedding, txt/Encoder_0/..., txt/head, t, b. Scanned
                checkpoints (`encoderblock/` with a leading layer axis) are split per layer. The
                architecture is read off the shapes; a 2-d img/embedding/kernel is SigLIP 2
                NaFlex's linear patch embedding (variant 'siglip2').
Every name the model needs must be present and every name in the file must be used: missing or
unexpected names, and shape mismatches, raise CheckpointError naming them.
"""

import json
import os
import re
from typing import Callable, Optional

import numpy as np

from mvp_jax.vision import towers
from mvp_jax.vision.config import SiglipConfig, TextConfig, VisionConfig

Transform = Callable[[np.ndarray], np.ndarray]
_HF_MODEL_TYPES = {
    'siglip': ('siglip', True, True), 'siglip_vision_model': ('siglip', True, False),
    'siglip_text_model': ('siglip', False, True), 'siglip2': ('siglip2', True, True),
    'siglip2_vision_model': ('siglip2', True, False),
    'siglip2_text_model': ('siglip2', False, True)}


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model: names the parameters and the problem."""


# ---------------------------------------------------------------- Hugging Face layout


def _hf_vision_config(c: dict, variant: str) -> VisionConfig:
  _check_act(c)
  if variant == 'siglip2':
    side = int(round(c.get('num_patches', 256) ** 0.5))
    if side * side != c.get('num_patches', 256):
      raise CheckpointError(f'num_patches {c["num_patches"]} is not a square grid.')
    grid = (side, side)
  else:
    size = c.get('image_size', 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    grid = (size[0] // c.get('patch_size', 16), size[1] // c.get('patch_size', 16))
  patch = c.get('patch_size', 16)
  if not isinstance(patch, int):
    raise CheckpointError(f'only square patches are supported, got patch_size {patch}.')
  return VisionConfig(width=c.get('hidden_size', 768), depth=c.get('num_hidden_layers', 12),
                      num_heads=c.get('num_attention_heads', 12),
                      mlp_dim=c.get('intermediate_size', 3072), patch_size=patch,
                      posemb_grid=grid, num_channels=c.get('num_channels', 3),
                      layer_norm_eps=c.get('layer_norm_eps', 1e-6),
                      use_head=c.get('vision_use_head', True))


def _hf_text_config(c: dict) -> TextConfig:
  _check_act(c)
  width = c.get('hidden_size', 768)
  return TextConfig(vocab_size=c.get('vocab_size', 32000), width=width,
                    depth=c.get('num_hidden_layers', 12),
                    num_heads=c.get('num_attention_heads', 12),
                    mlp_dim=c.get('intermediate_size', 3072),
                    max_len=c.get('max_position_embeddings', 64),
                    projection_size=c.get('projection_size') or width,
                    layer_norm_eps=c.get('layer_norm_eps', 1e-6))


def _check_act(c: dict) -> None:
  if c.get('hidden_act', 'gelu_pytorch_tanh') != 'gelu_pytorch_tanh':
    raise CheckpointError(f'hidden_act {c["hidden_act"]!r} is not supported (tanh GELU only).')


def hf_config(config_json: dict, **options) -> SiglipConfig:
  """SiglipConfig of a `transformers` config.json (options: dtype, remat)."""
  model_type = config_json.get('model_type')
  if model_type not in _HF_MODEL_TYPES:
    raise CheckpointError(f'config.json model_type {model_type!r} is not one of '
                          f'{sorted(_HF_MODEL_TYPES)}.')
  variant, has_vision, has_text = _HF_MODEL_TYPES[model_type]
  if has_vision and has_text:
    vision = _hf_vision_config(config_json.get('vision_config') or {}, variant)
    text = _hf_text_config(config_json.get('text_config') or {})
  else:
    vision = _hf_vision_config(config_json, variant) if has_vision else None
    text = _hf_text_config(config_json) if has_text else None
  return SiglipConfig(vision=vision, text=text, variant=variant, **options)


def _heads_in(width: int, heads: int) -> Transform:
  return lambda w: w.T.reshape(width, heads, width // heads)


def _hf_encoder(table: dict, ours: str, theirs: str, depth: int, width: int, heads: int):
  for i in range(depth):
    o, t = f'{ours}/encoder/block_{i}', f'{theirs}.encoder.layers.{i}'
    for ln, hf_ln in (('ln_0', 'layer_norm1'), ('ln_1', 'layer_norm2')):
      table[f'{o}/{ln}/scale'] = (f'{t}.{hf_ln}.weight', None)
      table[f'{o}/{ln}/bias'] = (f'{t}.{hf_ln}.bias', None)
    for name, hf in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      table[f'{o}/attention/{name}/kernel'] = (f'{t}.self_attn.{hf}.weight',
                                               _heads_in(width, heads))
      table[f'{o}/attention/{name}/bias'] = (f'{t}.self_attn.{hf}.bias',
                                             lambda b: b.reshape(heads, -1))
    table[f'{o}/attention/out/kernel'] = (f'{t}.self_attn.out_proj.weight',
                                          lambda w: w.T.reshape(heads, -1, width))
    table[f'{o}/attention/out/bias'] = (f'{t}.self_attn.out_proj.bias', None)
    for fc in ('fc1', 'fc2'):
      table[f'{o}/mlp/{fc}/kernel'] = (f'{t}.mlp.{fc}.weight', np.transpose)
      table[f'{o}/mlp/{fc}/bias'] = (f'{t}.mlp.{fc}.bias', None)


def _hf_table(config: SiglipConfig) -> dict:
  """{our '/'-path: (HF name, transform or None)}; HF names with the `*_model.` prefix."""
  table = {}
  v = config.vision
  if v is not None:
    d, h, p, c = v.width, v.num_heads, v.patch_size, v.num_channels
    patch = ((lambda w: w.T.reshape(p, p, c, d)) if config.variant == 'siglip2'
             else (lambda w: w.transpose(2, 3, 1, 0)))
    table['img/embedding/kernel'] = ('vision_model.embeddings.patch_embedding.weight', patch)
    table['img/embedding/bias'] = ('vision_model.embeddings.patch_embedding.bias', None)
    table['img/pos_embedding'] = ('vision_model.embeddings.position_embedding.weight', None)
    _hf_encoder(table, 'img', 'vision_model', v.depth, d, h)
    table['img/encoder_norm/scale'] = ('vision_model.post_layernorm.weight', None)
    table['img/encoder_norm/bias'] = ('vision_model.post_layernorm.bias', None)
    if v.use_head:
      m, t = 'img/map_head', 'vision_model.head'
      table[f'{m}/probe'] = (f'{t}.probe', None)
      for k, name in enumerate(('query', 'key', 'value')):
        table[f'{m}/attention/{name}/kernel'] = (
            f'{t}.attention.in_proj_weight', lambda w, k=k: _heads_in(d, h)(w[k * d:(k + 1) * d]))
        table[f'{m}/attention/{name}/bias'] = (
            f'{t}.attention.in_proj_bias', lambda b, k=k: b[k * d:(k + 1) * d].reshape(h, -1))
      table[f'{m}/attention/out/kernel'] = (f'{t}.attention.out_proj.weight',
                                            lambda w: w.T.reshape(h, -1, d))
      table[f'{m}/attention/out/bias'] = (f'{t}.attention.out_proj.bias', None)
      table[f'{m}/ln/scale'] = (f'{t}.layernorm.weight', None)
      table[f'{m}/ln/bias'] = (f'{t}.layernorm.bias', None)
      for fc in ('fc1', 'fc2'):
        table[f'{m}/mlp/{fc}/kernel'] = (f'{t}.mlp.{fc}.weight', np.transpose)
        table[f'{m}/mlp/{fc}/bias'] = (f'{t}.mlp.{fc}.bias', None)
  tc = config.text
  if tc is not None:
    table['txt/token_embedding/embedding'] = ('text_model.embeddings.token_embedding.weight',
                                              None)
    table['txt/pos_embedding'] = ('text_model.embeddings.position_embedding.weight', None)
    _hf_encoder(table, 'txt', 'text_model', tc.depth, tc.width, tc.num_heads)
    table['txt/encoder_norm/scale'] = ('text_model.final_layer_norm.weight', None)
    table['txt/encoder_norm/bias'] = ('text_model.final_layer_norm.bias', None)
    table['txt/head/kernel'] = ('text_model.head.weight', np.transpose)
    table['txt/head/bias'] = ('text_model.head.bias', None)
  if v is not None and tc is not None:
    table['t'] = ('logit_scale', lambda x: x.reshape(1))
    table['b'] = ('logit_bias', lambda x: x.reshape(1))
  return table


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of a HF folder (single file or sharded with model.safetensors.index.json)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.exists(index):
    with open(index, encoding='utf-8') as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
  elif os.path.exists(os.path.join(folder, 'model.safetensors')):
    files = ['model.safetensors']
  else:
    raise CheckpointError(f'{folder}: no model.safetensors (or index); PyTorch .bin folders '
                          'are not read, save them with safe_serialization=True.')
  tensors = {}
  for name in files:
    tensors.update(load_file(os.path.join(folder, name)))
  return tensors


def load_hf(folder: str, **options) -> tuple[SiglipConfig, dict]:
  """(config, params) of a `transformers` SigLIP / SigLIP 2 folder (options: dtype, remat)."""
  with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
    config = hf_config(json.load(f), **options)
  tensors = read_safetensors(folder)
  if config.vision is None or config.text is None:  # one-tower models: prefix optional
    prefix = 'vision_model.' if config.text is None else 'text_model.'
    tensors = {k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}
  return config, _assemble(config, _hf_table(config), tensors, folder)


# ---------------------------------------------------------------- big_vision layout


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Flat {name: array} of a big_vision .npz, without `params/`, scanned blocks split."""
  with np.load(path, allow_pickle=False) as data:
    flat = {k[len('params/'):] if k.startswith('params/') else k: data[k] for k in data.files}
  out = {}
  for name, value in flat.items():
    if '/encoderblock/' in name:
      for i, layer in enumerate(value):
        out[name.replace('/encoderblock/', f'/encoderblock_{i}/')] = layer
    else:
      out[name] = value
  return out


def _depth(names, prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r'encoderblock_(\d+)/')
  found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
  return max(found) + 1 if found else 0


def big_vision_config(tensors: dict, **options) -> SiglipConfig:
  """The architecture of a big_vision checkpoint read off its shapes (options: dtype, remat)."""
  vision = text = None
  variant = options.pop('variant', None)
  if 'img/embedding/kernel' in tensors:
    kernel = tensors['img/embedding/kernel']
    width = kernel.shape[-1]
    if kernel.ndim == 2:
      variant = variant or 'siglip2'
      channels = 3
      patch = int(round((kernel.shape[0] / channels) ** 0.5))
    else:
      patch, channels = kernel.shape[0], kernel.shape[2]
    num_pos = int(np.prod(tensors['img/pos_embedding'].shape[:-1]))
    side = int(round(num_pos ** 0.5))
    block = 'img/Transformer/encoderblock_0/'
    vision = VisionConfig(
        width=width, depth=_depth(tensors, 'img/Transformer/'),
        num_heads=tensors[block + 'MultiHeadDotProductAttention_0/query/kernel'].shape[1],
        mlp_dim=tensors[block + 'MlpBlock_0/Dense_0/kernel'].shape[1], patch_size=patch,
        posemb_grid=(side, side), num_channels=channels,
        use_head='img/MAPHead_0/probe' in tensors)
  if 'txt/Embed_0/embedding' in tensors:
    vocab, width = tensors['txt/Embed_0/embedding'].shape
    block = 'txt/Encoder_0/encoderblock_0/'
    head = tensors.get('txt/head/kernel')
    text = TextConfig(
        vocab_size=vocab, width=width, depth=_depth(tensors, 'txt/Encoder_0/'),
        num_heads=tensors[block + 'MultiHeadDotProductAttention_0/query/kernel'].shape[1],
        mlp_dim=tensors[block + 'MlpBlock_0/Dense_0/kernel'].shape[1],
        max_len=int(np.prod(tensors['txt/pos_embedding'].shape[:-1])),
        projection_size=width if head is None else head.shape[1])
  if vision is None and text is None:
    raise CheckpointError('no img/embedding/kernel and no txt/Embed_0/embedding: not a '
                          'big_vision SigLIP checkpoint.')
  return SiglipConfig(vision=vision, text=text, variant=variant or 'siglip', **options)


def _bv_encoder(table: dict, ours: str, theirs: str, depth: int):
  for i in range(depth):
    o, t = f'{ours}/encoder/block_{i}', f'{theirs}/encoderblock_{i}'
    for ln, bv in (('ln_0', 'LayerNorm_0'), ('ln_1', 'LayerNorm_1')):
      for leaf in ('scale', 'bias'):
        table[f'{o}/{ln}/{leaf}'] = (f'{t}/{bv}/{leaf}', None)
    for name in ('query', 'key', 'value', 'out'):
      for leaf in ('kernel', 'bias'):
        table[f'{o}/attention/{name}/{leaf}'] = (
            f'{t}/MultiHeadDotProductAttention_0/{name}/{leaf}', None)
    for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
      for leaf in ('kernel', 'bias'):
        table[f'{o}/mlp/{fc}/{leaf}'] = (f'{t}/MlpBlock_0/{dense}/{leaf}', None)


def _big_vision_table(config: SiglipConfig) -> dict:
  table = {}
  v = config.vision
  if v is not None:
    shape = (v.patch_size, v.patch_size, v.num_channels, v.width)
    table['img/embedding/kernel'] = ('img/embedding/kernel', lambda w: w.reshape(shape))
    table['img/embedding/bias'] = ('img/embedding/bias', None)
    table['img/pos_embedding'] = ('img/pos_embedding', lambda x: x.reshape(-1, x.shape[-1]))
    _bv_encoder(table, 'img', 'img/Transformer', v.depth)
    for leaf in ('scale', 'bias'):
      table[f'img/encoder_norm/{leaf}'] = (f'img/Transformer/encoder_norm/{leaf}', None)
    if v.use_head:
      table['img/map_head/probe'] = ('img/MAPHead_0/probe', None)
      for name in ('query', 'key', 'value', 'out'):
        for leaf in ('kernel', 'bias'):
          table[f'img/map_head/attention/{name}/{leaf}'] = (
              f'img/MAPHead_0/MultiHeadDotProductAttention_0/{name}/{leaf}', None)
      for leaf in ('scale', 'bias'):
        table[f'img/map_head/ln/{leaf}'] = (f'img/MAPHead_0/LayerNorm_0/{leaf}', None)
      for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
        for leaf in ('kernel', 'bias'):
          table[f'img/map_head/mlp/{fc}/{leaf}'] = (f'img/MAPHead_0/MlpBlock_0/{dense}/{leaf}',
                                                    None)
  if config.text is not None:
    table['txt/token_embedding/embedding'] = ('txt/Embed_0/embedding', None)
    table['txt/pos_embedding'] = ('txt/pos_embedding', lambda x: x.reshape(-1, x.shape[-1]))
    _bv_encoder(table, 'txt', 'txt/Encoder_0', config.text.depth)
    for leaf in ('scale', 'bias'):
      table[f'txt/encoder_norm/{leaf}'] = (f'txt/Encoder_0/encoder_norm/{leaf}', None)
    for leaf in ('kernel', 'bias'):
      table[f'txt/head/{leaf}'] = (f'txt/head/{leaf}', None)
  if v is not None and config.text is not None:
    table['t'] = ('t', lambda x: np.reshape(x, 1))
    table['b'] = ('b', lambda x: np.reshape(x, 1))
  return table


def load_big_vision(path: str, config: Optional[SiglipConfig] = None,
                    **options) -> tuple[SiglipConfig, dict]:
  """(config, params) of a big_vision .npz; `config` None reads it off the shapes.

  SigLIP checkpoints without txt/head (the i18n B/16 256) get an identity head, as
  `transformers`' converter gives them.
  """
  tensors = read_npz(path)
  config = config or big_vision_config(tensors, **options)
  if config.text is not None and 'txt/head/kernel' not in tensors:
    width = config.text.width
    tensors['txt/head/kernel'] = np.eye(width, config.text.projection_size, dtype=np.float32)
    tensors['txt/head/bias'] = np.zeros(config.text.projection_size, np.float32)
  return config, _assemble(config, _big_vision_table(config), tensors, path)


# ---------------------------------------------------------------- both


def _assemble(config: SiglipConfig, table: dict, tensors: dict, where: str) -> dict:
  """Builds the params tree from `tensors` through `table`; strict about names and shapes."""
  expected = _flatten(towers.param_shapes(config))
  if set(expected) != set(table):  # a bug here, never the user's file
    raise AssertionError(f'mapping table out of sync: {set(expected) ^ set(table)}')
  missing = sorted({src for src, _ in table.values() if src not in tensors})
  used = {src for src, _ in table.values()}
  unexpected = sorted(set(tensors) - used)
  if missing or unexpected:
    raise CheckpointError(f'{where}: the checkpoint does not match the model: missing '
                          f'{missing or "none"}; unexpected {unexpected or "none"}.')
  flat, mismatched = {}, []
  for path, (src, fn) in table.items():
    value = np.asarray(tensors[src])
    try:
      value = np.asarray(fn(value) if fn is not None else value, np.float32)
    except ValueError:
      pass  # a reshape that cannot happen is reported as a shape mismatch below
    if value.shape != tuple(expected[path].shape):
      mismatched.append(f'{src} {tuple(np.shape(tensors[src]))} -> {path} expects '
                        f'{tuple(expected[path].shape)}')
    flat[path] = value
  if mismatched:
    raise CheckpointError(f'{where}: shape mismatch: ' + '; '.join(mismatched))
  return _unflatten(flat)


def load(path: str, **options) -> tuple[SiglipConfig, dict]:
  """(config, params): a HF folder (config.json) or a big_vision .npz (options: dtype, remat,
  variant for .npz)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, 'config.json')):
      raise CheckpointError(f'{path}: a folder without config.json is not a HF checkpoint.')
    return load_hf(path, **options)
  if path.endswith('.npz'):
    return load_big_vision(path, **options)
  if os.path.basename(path).endswith('.safetensors'):
    return load_hf(os.path.dirname(path) or '.', **options)
  raise CheckpointError(f'{path}: expected a HF folder (config.json + model.safetensors) or a '
                        'big_vision .npz.')


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree
