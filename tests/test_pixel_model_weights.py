"""weights.init_from: the tower from a SigLIP HF folder, the MVPTR part from an MVPTR checkpoint,
and a report that names the source of each part."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from mvp_jax import config as config_lib
from mvp_jax import model as model_lib
from mvp_jax import weights
from mvp_jax.vision import checkpoint as siglip_checkpoint
from tests import sources_fixtures

# sources_fixtures.tiny_siglip: 16-wide, 1 block, 2 heads, MLP 24, 32 px images, 8 px patches.
VISION = dict(tower='siglip', image_size=32, width=16, depth=1, num_heads=2, mlp_dim=24,
              patch_size=8)
PIXEL = config_lib.tiny(region_feature_dim=22, num_text_layers=1, num_visual_layers=1,
                        num_cross_layers=1, vision=VISION)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  folder = tmp_path_factory.mktemp('w')
  siglip = sources_fixtures.tiny_siglip(folder / 'siglip')
  features_cfg = PIXEL.replace(vision=None)
  mvptr = nn.unbox(model_lib.init_params(features_cfg, jax.random.PRNGKey(7)))
  path = str(folder / 'pytorch_model.safetensors')
  save_file(weights.to_state_dict(mvptr, features_cfg), path)
  return str(siglip), path, mvptr


def test_tower_from_siglip_and_rest_from_mvptr(sources):
  siglip, path, mvptr = sources
  target = model_lib.init_params(PIXEL, jax.random.PRNGKey(0))
  params, report = weights.init_from(target, model_config=PIXEL, mvptr=path, tower=siglip)
  assert report.origins['MVPTR'] == path
  assert report.origins['backbone/vision_tower'].startswith(f'the SigLIP checkpoint {siglip}')
  summary = report.summary()
  assert f'backbone/vision_tower from the SigLIP checkpoint {siglip}' in summary
  assert 'img/map_head' in summary and 'txt' in summary  # named as not used
  expected = siglip_checkpoint.load(siglip)[1]['img']
  tower = traverse_util.flatten_dict(params['backbone']['vision_tower'])
  assert tower and all(f'backbone/vision_tower/{"/".join(k)}' in report.loaded for k in tower)
  for key, value in tower.items():
    np.testing.assert_array_equal(value, traverse_util.flatten_dict(expected)[key])
  for key, value in traverse_util.flatten_dict(mvptr).items():
    np.testing.assert_allclose(traverse_util.flatten_dict(params)[key], value, atol=1e-7)
  assert not report.fresh


def test_missing_tower_source_leaves_it_fresh_and_says_so(sources):
  _, path, _ = sources
  target = model_lib.init_params(PIXEL, jax.random.PRNGKey(0))
  params, report = weights.init_from(target, model_config=PIXEL, mvptr=path)
  assert report.origins['backbone/vision_tower'] == 'random initialisation'
  assert 'backbone/vision_tower/encoder_norm/scale' in report.fresh
  np.testing.assert_array_equal(params['backbone']['vision_tower']['pos_embedding'],
                                nn.unbox(target)['backbone']['vision_tower']['pos_embedding'])
  _, report = weights.init_from(target, model_config=PIXEL, tower=sources[0])
  assert report.origins['MVPTR'] == 'random initialisation'
  assert 'backbone/pooler/dense/kernel' in report.fresh


def test_tower_of_another_width_names_the_parameter(sources):
  wide = PIXEL.replace(region_feature_dim=38, vision=dict(VISION, width=32))
  target = model_lib.init_params(wide, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r'embedding/bias: checkpoint \(16,\), model \(32,\)'):
    weights.init_from(target, model_config=wide, tower=sources[0])
