r"""COCO image-text retrieval fine-tuning, evaluated on the 5k test split (spec §3.3, §4.1).

Command:

  python main.py --config=configs/retrieval_coco.py --workdir=/tmp/retrieval_coco \
      --config.data.directory=/data/coco_retrieval --config.init_from=/ckpt/mvp_base_for_coco

lr 4e-5, batch 96, 15 epochs, wd 0.05, dropout 0.1, no warmup, clip 1.0, seed 88, image LayerNorm
on, tag length 30 with the tags as a list (whether COCO evaluation used 20 or 30 is unknown,
spec §8.6). Expected (README, spec §7): TR R@1 77.3, IR R@1 60.1 on COCO-5k. Runtime not measured.
"""

import ml_collections

from configs import finetune_common
from configs import switches


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  switches.parse(arg, (), 'configs/retrieval_coco.py')
  config = finetune_common.get_base('retrieval')
  config.model['use_region_layernorm'] = True
  config.data.update(max_tag_length=30, tags_as_list=True)
  finetune_common.set_evals(config, ('test',), every=0)  # the final model
  config.batch_size = 96
  config.num_epochs = 15
  config.optimizer.update(lr=4e-5, reference_batch_size=96)
  config.checkpoint_every = 400
  config.data.truncate_regions = True  # VinVL detections: keep the first, as the authors do
  return config
