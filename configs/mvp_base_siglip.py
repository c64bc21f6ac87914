r"""MVPTR base on SigLIP B/16 grid regions (7 x 7 cells + the whole image, 768 + 6 dims).

Extract the regions once (mvp_jax/vision; weights: google/siglip-base-patch16-224 from the
Hugging Face Hub, or big_vision's webli_en_b16_224_63724782.npz):

  python -m input_pipeline.extract_regions --coco_json=annotations/captions_train2014.json \
      --image_root=train2014 --checkpoint=siglip-base-patch16-224 --out=/data/coco_siglip \
      --split=train --builtin_phrases
  python main.py --config=configs/mvp_base_siglip.py --workdir=gs://bucket/mvp_base_siglip \
      --config.data.directory=/data/coco_siglip

Everything else is configs/mvp_base.py. Nothing about this setting was measured here (no
accelerator, no real data): the region width is what the extraction writes, R = 50 is what grid
mode gives at 224 px, patch 16. `:runlocal` is mvp_base's CPU smoke run with these widths.
"""

import ml_collections

from configs import mvp_base

SIGLIP_WIDTH = 768   # SigLIP B/16 vision tower width
GRID_CELLS = 7       # 7 x 7 cells + 1 whole-image region


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = mvp_base.get_config(arg)
  config.model.region_feature_dim = SIGLIP_WIDTH + 6
  if 'runlocal' in (arg or ''):
    config.data.shapesworld.feature_dim = SIGLIP_WIDTH + 6
  else:
    config.data.max_img_seq_length = GRID_CELLS * GRID_CELLS + 1
  return config
