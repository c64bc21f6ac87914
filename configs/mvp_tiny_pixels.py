r"""Tiny MVPTR + a tiny ViT from scratch, trained end to end on ShapesWorld's 64 x 64 renderings.

  python main.py --config=configs/mvp_tiny_pixels.py --workdir=/tmp/mvp_tiny_pixels

The same data, steps and evaluation as configs/mvp_tiny.py (the hand-made-extractor features),
except that the region features come from pixels: `data.pixels=True` (the pipeline decodes the
record's PNG, augments, resizes and normalises in-graph; `input_pipeline/features.py`) and
`model.vision` puts a 2-block ViT (width 64, 8 px patches: an 8 x 8 patch grid) in the model,
trained with the rest (its own optimiser group, lr multiplier 1). Regions are the scene's boxes,
as a detector would give (the records' boxes), pooled by RoIAlign ('bilinear'); tags are the
records' (precomputed). `:smoke` makes a seconds-long run for tests (tests/test_pixel_train.py):
16 scenes resized to 32 x 32, a 1-block ViT of width 16 (a 4 x 4 patch grid) and the 1-layer
MVPTR of mvp_tiny's smoke, batch 4 on one device, 4 steps, random-resized crop + flip on as in
the full run (ops.PIXEL_AUGMENT), evaluation once at the end.
"""

import ml_collections

from configs import mvp_base
from configs import mvp_tiny
from configs import switches

TOWER = dict(tower='vit', image_size=64, width=64, depth=2, num_heads=4, mlp_dim=128,
             patch_size=8, stem='patch', pooling='bilinear', freeze=False, lr_multiplier=1.0,
             remat=False)


def use_tower(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (any task's, with the tiny MVPTR) reading pixels through TOWER: the model's vision
  tower, its region width, and pixel mode in the pipeline at the tower's resolution."""
  config.model.vision = dict(TOWER)
  config.model.region_feature_dim = TOWER['width'] + 6
  config.data.pixels = True
  config.data.image_size = TOWER['image_size']
  config.data.image_norm = 'minus_one_to_one'  # the towers' [-1, 1] (SigLIP's value range)
  return config


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  smoke = 'smoke' in switches.parse(arg, ('smoke',), 'configs/mvp_tiny_pixels.py')
  config = use_tower(mvp_tiny.get_config('smoke' if smoke else ''))
  if smoke:
    config.model.vision.update(image_size=32, width=16, depth=1, num_heads=2, mlp_dim=32)
    config.model.region_feature_dim = 16 + 6
    config.data.image_size = 32
    config.data.shapesworld.update(num_train_images=16, num_val_images=8)
    config.batch_size, config.eval_batch_size = 4, 8
    config.mesh_shape = (1, 1, 1)  # batch 4 is not split over a host's devices
    config.total_steps, config.log_every, config.checkpoint_every = 4, 2, 4
    config.async_checkpointing = False
    config.evals = mvp_base.pretraining_evals(every=4, top_k=4, add_contrastive=True)
  return config
