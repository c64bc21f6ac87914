"""Parity of the Flax SigLIP / SigLIP 2 towers with `transformers` (tiny random configs).

The PyTorch models are saved with save_pretrained and loaded through mvp_jax.vision.checkpoint;
a big_vision-layout .npz is written from the same PyTorch weights with big_vision's names.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from mvp_jax.vision import checkpoint  # pylint: disable=g-import-not-at-top
from mvp_jax.vision import towers  # pylint: disable=g-import-not-at-top

TOL = 1e-5
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              patch_size=8)
TEXT = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
            vocab_size=50, max_position_embeddings=12, projection_size=16,
            bos_token_id=None, eos_token_id=1, pad_token_id=1)


def _randomize(model):
  """Non-trivial values everywhere (HF zero-inits biases and sets LayerNorm to 1)."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.ndim == 1 and
                                                          p.shape[0] in (32, 24) else 0.0))
  return model.eval()


def _hf_models(version: int):
  if version == 1:
    vision_cfg = transformers.SiglipVisionConfig(image_size=32, **VISION)
    text_cfg = transformers.SiglipTextConfig(**TEXT)
    full = transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=vision_cfg.to_dict(), text_config=text_cfg.to_dict()))
  else:
    vision_cfg = transformers.Siglip2VisionConfig(num_patches=16, **VISION)
    text_cfg = transformers.Siglip2TextConfig(**TEXT)
    full = transformers.Siglip2Model(transformers.Siglip2Config(
        vision_config=vision_cfg.to_dict(), text_config=text_cfg.to_dict()))
  return _randomize(full)


def _images(height, width, batch=2, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype(np.float32)


def _hf_vision(model, images, version):
  """HF vision outputs for NHWC images: (hidden_states, last_hidden_state, pooled)."""
  b, h, w, c = images.shape
  p = VISION['patch_size']
  with torch.no_grad():
    if version == 1:
      out = model(torch.from_numpy(images.transpose(0, 3, 1, 2)),
                  interpolate_pos_encoding=(h, w) != (32, 32), output_hidden_states=True)
    else:
      patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
      patches = patches.reshape(b, (h // p) * (w // p), p * p * c)
      out = model(torch.from_numpy(patches),
                  pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
                  spatial_shapes=torch.tensor([[h // p, w // p]] * b),
                  output_hidden_states=True)
  return ([x.numpy() for x in out.hidden_states], out.last_hidden_state.numpy(),
          out.pooler_output.numpy())


def _assert_close(ours, theirs, what):
  ours = np.asarray(ours)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  err = np.abs(ours - theirs).max()
  assert err <= TOL, f'{what}: max abs error {err}'


def _check_vision(config, params, hf_vision, version, size):
  images = _images(*size)
  hidden, last, pooled = _hf_vision(hf_vision, images, version)
  out = towers.VisionTower(config).apply({'params': params['img']}, jnp.asarray(images))
  for i, (a, b) in enumerate(zip(out['hidden'], hidden)):
    _assert_close(a, b, f'vision hidden state {i}')
  _assert_close(out['tokens'], last, 'vision last_hidden_state')
  _assert_close(out['pooled'], pooled, 'vision pooled')
  assert np.abs(pooled).max() > 0.1  # the comparison is not between zeros


def _check_text(config, params, hf_text):
  ids = np.random.default_rng(2).integers(0, TEXT['vocab_size'], (3, 12))
  with torch.no_grad():
    ref = hf_text(torch.from_numpy(ids), output_hidden_states=True)
  out = towers.TextTower(config).apply({'params': params['txt']}, jnp.asarray(ids))
  for i, (a, b) in enumerate(zip(out['hidden'], ref.hidden_states)):
    _assert_close(a, b.numpy(), f'text hidden state {i}')
  _assert_close(out['tokens'], ref.last_hidden_state.numpy(), 'text last_hidden_state')
  _assert_close(out['pooled'], ref.pooler_output.numpy(), 'text pooled')


@pytest.mark.parametrize('version', [1, 2])
def test_full_model_parity_through_hf_folder(tmp_path, version):
  model = _hf_models(version)
  model.save_pretrained(tmp_path / 'hf')
  config, params = checkpoint.load(tmp_path / 'hf')
  assert config.variant == ('siglip' if version == 1 else 'siglip2')
  assert config.vision.posemb_grid == (4, 4) and config.text.projection_size == 16
  for size in ((32, 32), (40, 56)):  # the checkpoint's grid, then a resampled one
    _check_vision(config, params, model.vision_model, version, size)
  _check_text(config, params, model.text_model)
  np.testing.assert_allclose(params['t'], model.logit_scale.detach().numpy(), atol=0)
  np.testing.assert_allclose(params['b'], model.logit_bias.detach().numpy(), atol=0)


@pytest.mark.parametrize('version', [1, 2])
def test_one_tower_models_parity(tmp_path, version):
  full = _hf_models(version)
  prefix = 'Siglip' if version == 1 else 'Siglip2'
  vision = getattr(transformers, f'{prefix}VisionModel')(full.config.vision_config).eval()
  vision.load_state_dict(full.vision_model.state_dict())
  text = getattr(transformers, f'{prefix}TextModel')(full.config.text_config).eval()
  text.load_state_dict(full.text_model.state_dict())
  vision.save_pretrained(tmp_path / 'vision')
  text.save_pretrained(tmp_path / 'text')
  config, params = checkpoint.load(tmp_path / 'vision')
  assert config.text is None and set(params) == {'img'}
  _check_vision(config, params, vision, version, (32, 32))
  config, params = checkpoint.load(tmp_path / 'text')
  assert config.vision is None and set(params) == {'txt'}
  _check_text(config, params, text)


def hf_to_big_vision(model, version: int, scanned: bool = False) -> dict:
  """big_vision two_towers names (params/ prefixed) from a HF SiglipModel / Siglip2Model."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  vd, td = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
  vh = model.config.vision_config.num_attention_heads
  th = model.config.text_config.num_attention_heads
  p = model.config.vision_config.patch_size
  out = {}

  def encoder(hf, bv, depth, width, heads):
    for i in range(depth):
      t, b = f'{hf}.encoder.layers.{i}', f'{bv}/encoderblock_{i}'
      for hf_ln, bv_ln in (('layer_norm1', 'LayerNorm_0'), ('layer_norm2', 'LayerNorm_1')):
        out[f'{b}/{bv_ln}/scale'] = sd[f'{t}.{hf_ln}.weight']
        out[f'{b}/{bv_ln}/bias'] = sd[f'{t}.{hf_ln}.bias']
      for proj, name in (('q_proj', 'query'), ('k_proj', 'key'), ('v_proj', 'value')):
        out[f'{b}/MultiHeadDotProductAttention_0/{name}/kernel'] = (
            sd[f'{t}.self_attn.{proj}.weight'].T.reshape(width, heads, -1))
        out[f'{b}/MultiHeadDotProductAttention_0/{name}/bias'] = (
            sd[f'{t}.self_attn.{proj}.bias'].reshape(heads, -1))
      out[f'{b}/MultiHeadDotProductAttention_0/out/kernel'] = (
          sd[f'{t}.self_attn.out_proj.weight'].T.reshape(heads, -1, width))
      out[f'{b}/MultiHeadDotProductAttention_0/out/bias'] = sd[f'{t}.self_attn.out_proj.bias']
      for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
        out[f'{b}/MlpBlock_0/{dense}/kernel'] = sd[f'{t}.mlp.{fc}.weight'].T
        out[f'{b}/MlpBlock_0/{dense}/bias'] = sd[f'{t}.mlp.{fc}.bias']

  w = sd['vision_model.embeddings.patch_embedding.weight']
  out['img/embedding/kernel'] = w.transpose(2, 3, 1, 0) if version == 1 else w.T
  out['img/embedding/bias'] = sd['vision_model.embeddings.patch_embedding.bias']
  out['img/pos_embedding'] = sd['vision_model.embeddings.position_embedding.weight'][None]
  encoder('vision_model', 'img/Transformer', model.config.vision_config.num_hidden_layers, vd,
          vh)
  out['img/Transformer/encoder_norm/scale'] = sd['vision_model.post_layernorm.weight']
  out['img/Transformer/encoder_norm/bias'] = sd['vision_model.post_layernorm.bias']
  h = 'vision_model.head'
  out['img/MAPHead_0/probe'] = sd[f'{h}.probe']
  for k, name in enumerate(('query', 'key', 'value')):
    out[f'img/MAPHead_0/MultiHeadDotProductAttention_0/{name}/kernel'] = (
        sd[f'{h}.attention.in_proj_weight'][k * vd:(k + 1) * vd].T.reshape(vd, vh, -1))
    out[f'img/MAPHead_0/MultiHeadDotProductAttention_0/{name}/bias'] = (
        sd[f'{h}.attention.in_proj_bias'][k * vd:(k + 1) * vd].reshape(vh, -1))
  out['img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel'] = (
      sd[f'{h}.attention.out_proj.weight'].T.reshape(vh, -1, vd))
  out['img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias'] = sd[f'{h}.attention.out_proj.bias']
  out['img/MAPHead_0/LayerNorm_0/scale'] = sd[f'{h}.layernorm.weight']
  out['img/MAPHead_0/LayerNorm_0/bias'] = sd[f'{h}.layernorm.bias']
  for fc, dense in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
    out[f'img/MAPHead_0/MlpBlock_0/{dense}/kernel'] = sd[f'{h}.mlp.{fc}.weight'].T
    out[f'img/MAPHead_0/MlpBlock_0/{dense}/bias'] = sd[f'{h}.mlp.{fc}.bias']
  out['txt/Embed_0/embedding'] = sd['text_model.embeddings.token_embedding.weight']
  out['txt/pos_embedding'] = sd['text_model.embeddings.position_embedding.weight'][None]
  encoder('text_model', 'txt/Encoder_0', model.config.text_config.num_hidden_layers, td, th)
  out['txt/Encoder_0/encoder_norm/scale'] = sd['text_model.final_layer_norm.weight']
  out['txt/Encoder_0/encoder_norm/bias'] = sd['text_model.final_layer_norm.bias']
  out['txt/head/kernel'] = sd['text_model.head.weight'].T
  out['txt/head/bias'] = sd['text_model.head.bias']
  out['t'], out['b'] = sd['logit_scale'], sd['logit_bias']
  assert p == VISION['patch_size']
  if scanned:  # big_vision's scan=True layout: one stacked 'encoderblock' per tower
    for tower in ('img/Transformer', 'txt/Encoder_0'):
      names = sorted({k.split('/', 3)[3] if tower == 'txt/Encoder_0' else k.split('/', 3)[3]
                      for k in out if k.startswith(f'{tower}/encoderblock_')})
      depth = 2
      for name in names:
        out[f'{tower}/encoderblock/{name}'] = np.stack(
            [out.pop(f'{tower}/encoderblock_{i}/{name}') for i in range(depth)])
  return {f'params/{k}': v for k, v in out.items()}


@pytest.mark.parametrize('version,scanned', [(1, False), (1, True), (2, False)])
def test_parity_through_big_vision_npz(tmp_path, version, scanned):
  model = _hf_models(version)
  path = tmp_path / 'siglip.npz'
  np.savez(path, **hf_to_big_vision(model, version, scanned))
  config, params = checkpoint.load(path)
  assert config.variant == ('siglip' if version == 1 else 'siglip2')
  assert (config.vision.width, config.vision.depth, config.vision.num_heads,
          config.vision.mlp_dim, config.vision.posemb_grid) == (32, 2, 4, 48, (4, 4))
  assert (config.text.width, config.text.depth, config.text.num_heads, config.text.max_len,
          config.text.projection_size, config.text.vocab_size) == (24, 2, 3, 12, 16, 50)
  for size in ((32, 32), (40, 56)):
    _check_vision(config, params, model.vision_model, version, size)
  _check_text(config, params, model.text_model)


def test_key_checking_names_missing_unexpected_and_mismatched(tmp_path):
  model = _hf_models(1)
  names = hf_to_big_vision(model, 1)
  broken = dict(names)
  del broken['params/img/MAPHead_0/probe']
  broken['params/img/extra/kernel'] = np.zeros(3, np.float32)
  np.savez(tmp_path / 'broken.npz', **broken)
  config, _ = checkpoint.load_big_vision(_write(tmp_path / 'ok.npz', names))
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_big_vision(tmp_path / 'broken.npz', config)
  assert 'img/MAPHead_0/probe' in str(e.value) and 'img/extra/kernel' in str(e.value)
  wrong = dict(names)
  wrong['params/txt/head/bias'] = np.zeros(7, np.float32)
  with pytest.raises(checkpoint.CheckpointError, match=r'txt/head/bias \(7,\)'):
    checkpoint.load_big_vision(_write(tmp_path / 'wrong.npz', wrong), config)
  model.save_pretrained(tmp_path / 'hf')
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  tensors = load_file(tmp_path / 'hf' / 'model.safetensors')
  tensors.pop('text_model.head.weight')
  save_file(tensors, tmp_path / 'hf' / 'model.safetensors')
  with pytest.raises(checkpoint.CheckpointError, match='text_model.head.weight'):
    checkpoint.load(tmp_path / 'hf')


def _write(path, arrays):
  np.savez(path, **arrays)
  return path


def test_bf16_remat_and_any_size_run():
  config = towers.SiglipConfig(
      vision=towers.VisionConfig(width=16, depth=2, num_heads=2, mlp_dim=24, patch_size=4,
                                 posemb_grid=(3, 3)),
      text=None, dtype='bfloat16', remat=True)
  params = towers.init_params(config, jax.random.PRNGKey(0))
  images = jnp.asarray(_images(20, 12))
  out = towers.VisionTower(config).apply({'params': params['img']}, images)
  assert out['tokens'].dtype == jnp.bfloat16 and out['tokens'].shape == (2, 15, 16)
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  f32 = towers.VisionTower(config.__class__(**{**config.__dict__, 'dtype': 'float32'})).apply(
      {'params': params['img']}, images)
  assert np.abs(np.asarray(out['pooled'], np.float32) - f32['pooled']).max() < 0.1
  grads = jax.grad(lambda p: towers.VisionTower(config).apply(
      {'params': p}, images)['pooled'].astype(jnp.float32).sum())(params['img'])
  assert np.isfinite(np.asarray(grads['embedding']['kernel'])).all()
  boxed = jax.eval_shape(lambda: towers.Siglip(config).init(
      jax.random.PRNGKey(0), images))['params']
  specs = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, 'names'))
  assert all(hasattr(s, 'names') for s in specs), 'every parameter has logical axis names'
