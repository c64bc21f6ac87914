r"""Tiny MVPTR + a tiny ViT from scratch, trained end to end on ShapesWorld's 64 x 64 renderings.

  python main.py --config=configs/mvp_tiny_pixels.py --workdir=/tmp/mvp_tiny_pixels

The same data, steps and evaluation as configs/mvp_tiny.py (the hand-made-extractor features),
except that the region features come from pixels: `data.pixels=True` (the pipeline decodes the
record's PNG, augments, resizes and normalises in-graph; `input_pipeline/features.py`) and
`model.vision` puts a 2-block ViT (width 64, 8 px patches: an 8 x 8 patch grid) in the model,
trained with the rest (its own optimiser group, lr multiplier 1). Regions are the scene's boxes,
as a detector would give (the records' boxes), pooled by RoIAlign ('bilinear'); tags are the
records' (precomputed). `:smoke` makes a seconds-long run for tests.
"""

import ml_collections

from configs import mvp_tiny
from configs import switches

TOWER = dict(tower='vit', image_size=64, width=64, depth=2, num_heads=4, mlp_dim=128,
             patch_size=8, pooling='bilinear', freeze=False, lr_multiplier=1.0, remat=False)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  smoke = 'smoke' in switches.parse(arg, ('smoke',), 'configs/mvp_tiny_pixels.py')
  config = mvp_tiny.get_config('smoke' if smoke else '')
  config.model.vision = dict(TOWER)
  config.model.region_feature_dim = TOWER['width'] + 6
  config.data.pixels = True
  config.data.image_size = TOWER['image_size']
  config.data.image_norm = 'minus_one_to_one'  # the towers' [-1, 1] (SigLIP's value range)
  return config
