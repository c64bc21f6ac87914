r"""MVPTR base with a SigLIP B/16 image tower inside the model, trained end to end from pixels.

  python main.py --config=configs/mvp_base_siglip_e2e.py --workdir=gs://bucket/mvp_base_e2e \
      --config.data.directory=/data/coco_records \
      --config.init_from=/path/to/mvptr_or_bert --config.model.vision.checkpoint=/siglip-b16-224

The tower (google/siglip-base-patch16-224 as a Hugging Face folder, or big_vision's
webli_en_b16_224 .npz) and the MVPTR part (an MVPTR checkpoint or a BERT folder) are loaded by
`weights.init_from`, which logs where each part came from. The tower trains with a tenth of the
learning rate (`model.vision.lr_multiplier`) and its blocks are rematerialised; `freeze=True`
keeps it fixed (then the model equals one fed the offline extractor's features). Regions: the
records' boxes pooled by RoIAlign, at most 50 (`data.max_img_seq_length`); grid cells of
`mvp_jax/vision/regions.grid_boxes` work the same way when stored as boxes. Everything else is
configs/mvp_base.py. Nothing of this setting was measured on an accelerator here; the CPU few-step
figures are in the README.
"""

import ml_collections

from configs import mvp_base

TOWER = dict(tower='siglip', size='B/16', image_size=224, pooling='bilinear', freeze=False,
             lr_multiplier=0.1, weight_decay=-1.0, remat=True, checkpoint='')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = mvp_base.get_config(arg)
  config.model.vision = dict(TOWER)
  config.model.region_feature_dim = 768 + 6
  config.data.pixels = True
  config.data.image_size = TOWER['image_size']
  config.data.image_norm = 'minus_one_to_one'
  if 'runlocal' in (arg or ''):  # mvp_base's CPU smoke run: ShapesWorld 64 px images
    config.model.vision.image_size = config.data.image_size = 64
    config.model.vision.posemb_grid = 14  # B/16's 224 px table, resampled to the 4 x 4 grid
  return config
