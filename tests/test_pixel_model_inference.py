"""Predictor of a pixel model: a plain RGB image (array or file) goes through the tower."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

import mvp_jax
from input_pipeline import storage
from mvp_jax import checkpointing
from mvp_jax import inference
from mvp_jax import pixel_model
from mvp_jax.vision import extractor as extractor_lib
from tests.test_inference import make_run

VISION = dict(tower='vit', image_size=32, width=16, depth=1, num_heads=2, mlp_dim=32,
              patch_size=8, grid_cells=2, freeze=True)


@pytest.fixture(scope='module')
def predictors():
  """(pixel Predictor, features Predictor of the same weights without the tower)."""
  workdir = make_run()
  base, _, _ = checkpointing.load_trained(workdir)
  config = base.replace(region_feature_dim=22, vision=VISION)
  params = nn.unbox(mvp_jax.init_params(config, jax.random.PRNGKey(3)))
  vocab_dir = f'{workdir}/data'
  tokenizer, concepts = storage.load_vocabularies(vocab_dir)
  source = inference.Predictor.load(workdir)
  pixel = inference.Predictor(config, params, tokenizer, concepts, source.lengths)
  features_params = dict(params, backbone={k: v for k, v in params['backbone'].items()
                                           if k != 'vision_tower'})
  features = inference.Predictor(config.replace(vision=None), features_params, tokenizer,
                                 concepts, source.lengths)
  return pixel, features


def _image(seed):
  return np.random.RandomState(seed).randint(0, 256, (48, 40, 3)).astype(np.uint8)


def test_image_array_and_file_through_the_tower(predictors, tmp_path):
  pixel, _ = predictors
  path = tmp_path / 'plain.png'
  Image.fromarray(_image(0)).save(path)
  text = 'a red circle left of a blue square'
  from_file = pixel.match_score(str(path), text)
  np.testing.assert_allclose(from_file, pixel.match_score(_image(0), text), atol=1e-6)
  assert abs(pixel.match_score(_image(1), text) - from_file) > 1e-6  # the pixels matter
  result = pixel.ground(str(path), text)
  assert result['boxes'].shape == (2 * 2 + 1, 4)  # 2 x 2 cells + the whole image
  np.testing.assert_allclose(result['boxes'][-1], [0, 0, 40, 48], atol=1e-4)
  assert pixel.fill_mask(str(path), 'a red [MASK] left of a blue square')['masks'][0]
  ranked = pixel.retrieve(text, [_image(0), str(path), _image(1)], top_k=3)
  assert {i for i, _ in ranked} == {0, 1, 2}
  np.testing.assert_allclose(dict(ranked)[0], dict(ranked)[1], atol=1e-6)


def test_frozen_tower_predictor_equals_features_predictor(predictors):
  pixel, features = predictors
  record = pixel_model.image_record(_image(2), pixel.config.vision, 22)
  tower = {'img': pixel.params['backbone']['vision_tower']}
  extract = extractor_lib.RegionExtractor(pixel.config.vision.siglip_config(), tower,
                                          regions='boxes', batch_size=1, image_size=32,
                                          devices=jax.devices()[:1])
  uint8 = np.asarray(Image.fromarray(_image(2)).resize((32, 32), Image.BICUBIC))
  feats, _ = extract(uint8[None], record['region_boxes'][None])
  offline = dict(record, region_features=feats[0])
  offline.pop('pixels')
  text = 'a green [MASK] above a red triangle'
  np.testing.assert_allclose(pixel.match_score(_image(2), text),
                             features.match_score(offline, text), atol=1e-5)
  filled_pixel = pixel.fill_mask(_image(2), text)['masks'][0]
  filled_features = features.fill_mask(offline, text)['masks'][0]
  assert [w for w, _ in filled_pixel] == [w for w, _ in filled_features]
