"""Checkpoint conversion: round trips, file formats, clear errors, config inference (spec §6)."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

import mvp_jax
from mvp_jax import convert

CONFIGS = {
    'img_ln_qa': mvp_jax.config.tiny(region_feature_dim=12, use_region_layernorm=True,
                                     qa_num_answers=5),
    'plain': mvp_jax.config.tiny(region_feature_dim=12, use_region_layernorm=False,
                                 num_cross_layers=1),
}


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def initialised(request):
  config = CONFIGS[request.param]
  return config, nn.unbox(mvp_jax.init_params(config, jax.random.PRNGKey(0)))


@pytest.fixture(scope='module')
def state():
  """A torch-named state dict of the first config."""
  config = CONFIGS['img_ln_qa']
  params = nn.unbox(mvp_jax.init_params(config, jax.random.PRNGKey(1)))
  return config, convert.params_to_torch(params, config)


def test_round_trip_is_bit_exact(initialised):
  config, params = initialised
  state = convert.params_to_torch(params, config)
  # Names as the authors' checkpoints have them (spec §6).
  assert ('bert.LayerNorm.weight' in state) == config.use_region_layernorm
  assert ('qa_head.weight' in state) == bool(config.qa_num_answers)
  q = state['bert.txt_encoder.layer.0.attention.self.query.weight']
  assert q.shape == (config.hidden_size, config.hidden_size) and q.dtype == np.float32
  assert state['bert.img_embedding.weight'].shape == (config.hidden_size, 12)
  assert state['logit_scale'].shape == ()
  assert state['cls.predictions.decoder.weight'].shape == (config.word_vocab_size,
                                                           config.hidden_size)
  # Every parameter of the model has exactly one torch name.
  flat = traverse_util.flatten_dict(params)
  assert len(state) == len(flat)
  # Torch [out, in] layouts: query row 5 is the output feature 5 = head 0, dim 5 (head_dim 8).
  kernel = np.asarray(params['backbone']['text_encoder']['layer_0']['attention']['query'][
      'kernel'])
  np.testing.assert_array_equal(q[5], kernel[:, 0, 5])
  np.testing.assert_array_equal(q[8 + 3], kernel[:, 1, 3])

  back = traverse_util.flatten_dict(convert.torch_to_params(state, config))
  assert set(back) == set(flat)
  for path, value in flat.items():
    assert back[path].dtype == np.float32
    np.testing.assert_array_equal(back[path], np.asarray(value), err_msg='/'.join(path))


def test_backbone_only_round_trip(initialised):
  config, params = initialised
  entries = convert.backbone_entries(config)
  state = convert.params_to_torch(params, config, entries)
  assert all(k.startswith('bert.') or k == 'logit_scale' for k in state)
  back = convert.torch_to_params(state, config, entries)
  assert set(back) == {'backbone'}
  jax.tree_util.tree_map(np.testing.assert_array_equal, back['backbone'],
                         jax.tree_util.tree_map(np.asarray, params['backbone']))


def test_load_safetensors_torch_bin_and_directory(state, tmp_path):
  torch = pytest.importorskip('torch')
  _, tensors = state
  path = str(tmp_path / 'model.safetensors')
  convert.save_safetensors(tensors, path)
  for loaded in (convert.load_state_dict(path), convert.load_state_dict(str(tmp_path))):
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
      np.testing.assert_array_equal(loaded[name], value)

  # A half-precision torch checkpoint, wrapped in {'state_dict': ...} and DataParallel-prefixed.
  half = {f'module.{k}': torch.from_numpy(v).half() for k, v in tensors.items()}
  bin_path = str(tmp_path / 'pytorch_model.bin')
  torch.save({'state_dict': half}, bin_path)
  loaded = convert.load_state_dict(bin_path)
  assert set(loaded) == set(tensors)  # `module.` dropped
  name = 'bert.embeddings.word_embeddings.weight'
  assert loaded[name].dtype == np.float32
  np.testing.assert_array_equal(loaded[name], half[f'module.{name}'].float().numpy())
  assert np.abs(loaded[name] - tensors[name]).max() > 0  # really fp16-rounded
  config, params = mvp_jax.load_checkpoint(bin_path, num_heads=4)
  assert config.qa_num_answers == 5 and 'mlm_head' in params
  np.testing.assert_array_equal(params['backbone']['embeddings']['word_embeddings']['embedding'],
                                loaded[name])

  with pytest.raises(FileNotFoundError):
    convert.load_state_dict(str(tmp_path / 'empty'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    convert.load_state_dict(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match='Unknown checkpoint format'):
    (tmp_path / 'weights.h5').write_bytes(b'')
    convert.load_state_dict(str(tmp_path / 'weights.h5'))


def test_conversion_errors_name_missing_and_unexpected_tensors(state):
  config, tensors = state
  truncated = dict(tensors)
  del truncated['bert.mul_encoder.layer.1.output.dense.bias']
  del truncated['half_mlm.decoder.weight']
  with pytest.raises(convert.ConversionError) as error:
    convert.torch_to_params(truncated, config)
  message = str(error.value)
  assert 'missing 2 tensors' in message
  assert 'bert.mul_encoder.layer.1.output.dense.bias' in message
  assert 'half_mlm.decoder.weight' in message

  extra = dict(tensors, **{'bert.extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(convert.ConversionError, match=r"unexpected 1 tensors: \['bert.extra"):
    convert.torch_to_params(extra, config)
  convert.torch_to_params(extra, config, ignore_unexpected=[r'^bert\.extra\.'])

  wrong = dict(tensors)
  wrong['bert.txt_encoder.layer.0.intermediate.dense.weight'] = np.zeros((7, 32), np.float32)
  with pytest.raises(convert.ConversionError, match='intermediate.dense.weight'):
    convert.torch_to_params(wrong, config)


def test_infer_config(state):
  config, tensors = state
  inferred = convert.infer_config(tensors, num_heads=config.num_heads)
  assert inferred == config
  # Without the override heads follow the 64-wide BERT convention; other fields are read off.
  assert convert.infer_config(tensors).num_heads == 1
  no_ln = {k: v for k, v in tensors.items() if not k.startswith(('bert.LayerNorm', 'qa_head'))}
  inferred = convert.infer_config(no_ln, num_heads=4)
  assert not inferred.use_region_layernorm and inferred.qa_num_answers == 0
  with pytest.raises(convert.ConversionError, match='word_embeddings'):
    convert.infer_config({'bert.pooler.dense.weight': np.zeros((32, 32))})


def test_imports_without_torch():
  code = ("import sys; sys.modules['torch'] = None; import mvp_jax, mvp_jax.convert; "
          "assert mvp_jax.load_checkpoint")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
