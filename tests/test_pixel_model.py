"""The vision tower inside the model: frozen tower == offline extraction; the tower's optimiser."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mvp_jax import config as config_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import pixel_model
from mvp_jax.vision import extractor as extractor_lib
from mvp_jax.vision import towers

B, TEXT, TAGS, R, SIZE = 4, 8, 3, 5, 32
VISION = dict(tower='vit', image_size=SIZE, width=32, depth=2, num_heads=2, mlp_dim=64,
              patch_size=8)


def _config(**vision):
  bins = vision.get('bins', 1)
  return config_lib.tiny(region_feature_dim=bins * bins * VISION['width'] + 6, num_text_layers=1,
                         num_visual_layers=1, num_cross_layers=1, vision=dict(VISION, **vision))


def _inputs():
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (B, SIZE, SIZE, 3)).astype(np.uint8)
  lo = rng.uniform(0, 0.6, (B, R, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (B, R, 2))], -1).clip(0, 1)
  regions = np.array([5, 3, 4, 1])
  mask = np.concatenate([np.ones((B, TAGS)), np.arange(R)[None] < regions[:, None]], 1)
  batch = dict(input_ids_a=rng.randint(1, 200, (B, TEXT)), attention_mask_a=np.ones((B, TEXT)),
               token_type_ids_a=np.zeros((B, TEXT)), input_ids_b=rng.randint(1, 200, (B, TAGS)),
               token_type_ids_b=np.ones((B, TAGS)), attention_mask_b=mask,
               phrase_index=np.tile([1, 3], (B, 1)), img_index=np.stack(
                   [np.full(B, TEXT), TEXT + regions], 1),
               mlm_labels_a=np.where(rng.uniform(size=(B, TEXT)) < 0.3, 7, -1),
               mlm_labels_b=np.where(rng.uniform(size=(B, TAGS)) < 0.5, 9, -1))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  return images, boxes.astype(np.float32), batch


@pytest.mark.parametrize('stem,bins,crops', [('patch', 1, False), ('conv', 1, False),
                                             ('patch', 2, False), ('patch', 1, True)])
def test_frozen_tower_in_graph_equals_offline_extraction(stem, bins, crops):
  cfg = _config(freeze=True, stem=stem, bins=bins, crops=crops)
  images, boxes, batch = _inputs()
  params = nn.unbox(model_lib.init_params(cfg, jax.random.PRNGKey(0)))
  siglip_cfg = cfg.vision.siglip_config()
  tower = {'img': params['backbone']['vision_tower']}
  extractor = extractor_lib.RegionExtractor(siglip_cfg, tower, regions='boxes', bins=bins,
                                            crops=crops,
                                            batch_size=B, image_size=SIZE,
                                            devices=jax.devices()[:1])
  offline, _ = extractor(images, boxes)
  assert offline.shape == (B, R, cfg.region_feature_dim) == (B, R, extractor.feature_dim)

  pixel_batch = dict(batch, pixels=jnp.asarray(pixel_model.normalise(images)),
                     region_boxes=jnp.asarray(boxes))
  feats = jax.jit(lambda p, b: model_lib.MVPBackbone(cfg).apply(
      {'params': p}, b, method=lambda m, b: pixel_model.region_features(
          m.vision_tower, b, cfg.vision)))(params['backbone'], pixel_batch)
  np.testing.assert_allclose(feats, offline, atol=1e-5, rtol=0)

  # Whole-model outputs: the pixel model == the features model on the extracted rows.
  features_cfg = cfg.replace(vision=None)
  features_params = dict(params, backbone={k: v for k, v in params['backbone'].items()
                                           if k != 'vision_tower'})
  run = lambda c: jax.jit(lambda p, b: model_lib.MVPPretrainingModel(c).apply(
      {'params': p}, b, hard_negatives=jax.random.PRNGKey(1)))
  from_pixels = run(cfg)(params, pixel_batch)
  from_features = run(features_cfg)(features_params, dict(batch, img_feats=jnp.asarray(offline)))
  valid = np.asarray(batch['attention_mask_b'], bool)
  for name in ('txt_encoder_output', 'sim_mat', 'pooled_output', 'itm_logits', 'mlm_logits'):
    np.testing.assert_allclose(from_pixels[name], from_features[name], atol=1e-5, rtol=0,
                               err_msg=name)
  np.testing.assert_allclose(np.asarray(from_pixels['vis_encoder_output'])[valid],
                             np.asarray(from_features['vis_encoder_output'])[valid], atol=1e-5,
                             rtol=0)


def test_pixel_batch_errors_name_the_problem():
  cfg = _config()
  images, boxes, batch = _inputs()
  params = nn.unbox(model_lib.init_params(cfg, jax.random.PRNGKey(0)))
  apply = lambda b: model_lib.MVPBackbone(cfg).apply({'params': params['backbone']}, b)
  with pytest.raises(ValueError, match='region_boxes'):
    apply(dict(batch, pixels=jnp.asarray(pixel_model.normalise(images))))
  with pytest.raises(ValueError, match=r'model.vision.image_size'):
    apply(dict(batch, pixels=jnp.zeros((B, 16, 16, 3)), region_boxes=jnp.asarray(boxes)))
  with pytest.raises(ValueError, match='x the tower width'):
    config_lib.tiny(vision=VISION)  # region_feature_dim 2054 != 32 + 6
  with pytest.raises(ValueError, match='precomputed'):
    _config(tags='in_graph')
  with pytest.raises(ValueError, match='bins'):
    _config(bins=0)
  with pytest.raises(ValueError, match='crops'):
    _config(crops='yes')
  with pytest.raises(ValueError, match='x the tower width'):
    config_lib.tiny(region_feature_dim=38, vision=dict(VISION, bins=2))  # 2 x 2 x 32 + 6 = 134


def _one_step(cfg, optimizer_overrides=None):
  """(params, the updates of one AdamW step, gradients) of a loss on the MLM logits and ITC."""
  images, boxes, batch = _inputs()
  batch = dict(batch, pixels=jnp.asarray(pixel_model.normalise(images)),
               region_boxes=jnp.asarray(boxes))
  params = nn.unbox(model_lib.init_params(cfg, jax.random.PRNGKey(0)))
  opt_config = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, weight_decay=0.01,
                                              b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0))
  opt_config.update(optimizer_overrides or {})
  tx = optim.create_optimizer(opt_config, 10, B, subtrees=pixel_model.optimizer_subtrees(cfg))

  def loss(p):
    out = model_lib.MVPPretrainingModel(cfg).apply({'params': p}, batch)
    return jnp.mean(out['mlm_logits'] ** 2) + jnp.mean(out['sim_mat'] ** 2)

  grads = jax.grad(loss)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return params, updates, grads


def _leaves(tree, part):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(
      tree['backbone']['vision_tower' if part == 'tower' else 'text_encoder'])]


def test_frozen_tower_is_unchanged_and_gets_no_gradient():
  params, updates, grads = _one_step(_config(freeze=True))
  after = optax.apply_updates(params, updates)
  for new, old in zip(_leaves(after, 'tower'), _leaves(params, 'tower')):
    np.testing.assert_array_equal(new, old)
  assert all(np.all(g == 0) for g in _leaves(grads, 'tower'))
  assert any(np.any(u != 0) for u in _leaves(updates, 'text'))


def test_tower_lr_multiplier_and_weight_decay():
  params, base, _ = _one_step(_config(weight_decay=0.0))
  _, scaled, _ = _one_step(_config(lr_multiplier=0.25, weight_decay=0.0))
  assert any(np.any(u != 0) for u in _leaves(base, 'tower'))
  for full, quarter in zip(_leaves(base, 'tower'), _leaves(scaled, 'tower')):
    np.testing.assert_allclose(quarter, 0.25 * full, atol=1e-12, rtol=1e-6)
  for full, same in zip(_leaves(base, 'text'), _leaves(scaled, 'text')):
    np.testing.assert_array_equal(same, full)
  # The tower's own decay: 0 here, the global 0.01 elsewhere; the kernel then differs by lr*wd*p.
  _, decayed, _ = _one_step(_config())
  kernel = lambda p: np.asarray(p['backbone']['vision_tower']['encoder']['block_0']['mlp'][
      'fc1']['kernel'])
  np.testing.assert_allclose(kernel(base) - kernel(decayed), 1e-3 * 0.01 * kernel(params),
                             atol=1e-9, rtol=0)


@pytest.mark.parametrize('task', ['retrieval', 'vqa', 've', 're'])
def test_task_models_take_the_tower(task):
  """Each fine-tuning task's model (built by its task module, as the trainer does) runs the tower:
  a frozen tower gives the outputs of the features model fed the tower's region features."""
  from mvp_jax import tasks  # pylint: disable=g-import-not-at-top
  cfg = _config(freeze=True).replace(qa_num_answers=5 if task == 'vqa' else 0)
  options = ml_collections.ConfigDict(dict(num_labels=3, phrase_layer=0))
  module = tasks.get(task)
  images, boxes, batch = _inputs()
  batch = dict(batch, pixels=jnp.asarray(pixel_model.normalise(images)),
               region_boxes=jnp.asarray(boxes))
  batch.pop('mlm_labels_a'), batch.pop('mlm_labels_b')
  model = module.create_model(options, cfg)
  params = nn.unbox(module.init_params(model, jax.random.PRNGKey(0), batch))
  assert 'vision_tower' in params['backbone']
  out = jax.jit(lambda p, b: model.apply({'params': p}, b))(params, batch)
  feats = model_lib.MVPBackbone(cfg).apply(
      {'params': params['backbone']}, batch,
      method=lambda m, b: pixel_model.region_features(m.vision_tower, b, cfg.vision))
  features_model = module.create_model(options, cfg.replace(vision=None))
  rest = dict(params, backbone={k: v for k, v in params['backbone'].items()
                                if k != 'vision_tower'})
  ref = jax.jit(lambda p, b: features_model.apply({'params': p}, b))(
      rest, dict({k: v for k, v in batch.items() if k not in ('pixels', 'region_boxes')},
                 img_feats=feats))
  head = {'retrieval': 'match_logits', 'vqa': 'answer_logits', 've': 'class_logits',
          're': 'region_logits'}[task]
  keys = [k for k in (head, 'pooled_output', 'txt_encoder_output') if k in ref]
  assert head in keys, sorted(ref)
  for name in keys:
    np.testing.assert_allclose(out[name], ref[name], atol=1e-5, rtol=0, err_msg=name)


def test_conv_stem_sees_past_its_patch_and_is_refused_where_it_cannot_be():
  """The 'conv' stem's 3 x 3 stride-2 convolutions overlap, so a patch's token depends on the
  pixels beside it; the 'patch' stem's does not. Widths double up to the tower's."""
  config = lambda stem: towers.SiglipConfig(
      vision=towers.VisionConfig(width=32, depth=1, num_heads=2, mlp_dim=16, patch_size=8,
                                 posemb_grid=(4, 4), use_head=False, stem=stem), text=None)
  images = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (1, SIZE, SIZE, 3)), jnp.float32)
  beside = images.at[0, 3, 8].add(1.0)  # row 3, column 8: the first pixel right of patch (0, 0)
  first_embedded = {}
  for stem in ('patch', 'conv'):
    tower = towers.VisionTower(config(stem))
    boxed = tower.init(jax.random.PRNGKey(0), images)['params']
    params = nn.unbox(boxed)
    embed = lambda x, p=params, t=tower: t.apply({'params': p}, x)['hidden'][0][0, 0]
    first_embedded[stem] = float(jnp.abs(embed(beside) - embed(images)).max())
    if stem == 'conv':
      widths = [params['conv_stem'][f'conv_{k}']['kernel'].shape for k in range(3)]
      assert widths == [(3, 3, 3, 8), (3, 3, 8, 16), (3, 3, 16, 32)]
      assert params['embedding']['kernel'].shape == (1, 1, 32, 32)
      names = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, 'names'))
      assert all(hasattr(n, 'names') for n in names), 'every parameter has logical axis names'
  assert first_embedded['patch'] == 0.0 and first_embedded['conv'] > 1e-3, first_embedded
  with pytest.raises(ValueError, match='power-of-two patch size'):
    towers.VisionConfig(patch_size=6, posemb_grid=(4, 4), stem='conv')
  with pytest.raises(ValueError, match="stem must be one of"):
    towers.VisionConfig(stem='resnet')
  with pytest.raises(ValueError, match="SigLIP checkpoint's tower has the 'patch' stem"):
    config_lib.tiny(vision=dict(VISION, tower='siglip', stem='conv'))
