r"""Flickr30k image-text retrieval fine-tuning (spec §3.3, §4.1).

Command (task data imported once with `input_pipeline.tasks`, the base model pre-trained or
converted from the authors' `mvp_base_for_fk`):

  python main.py --config=configs/retrieval_flickr.py --workdir=/tmp/retrieval_flickr \
      --config.data.directory=/data/flickr_retrieval --config.init_from=/ckpt/mvp_base_for_fk

lr 4e-5, batch 64, 10 epochs ("converges within 2 epochs"), wd 0.05, dropout 0.1, no warmup, clip
1.0, seed 88, image LayerNorm on; lengths 50+5 / 20 / 50. Evaluation on `test` (1k images, 5k
captions): top 128 captions per image / 64 images per caption re-scored by the ITM classifier.
Expected (README, spec §7): TR R@1 95.2, IR R@1 84.0. Runtime not measured here (one A100-class
GPU: several hours).
"""

import ml_collections

from configs import finetune_common
from configs import switches


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  switches.parse(arg, (), 'configs/retrieval_flickr.py')
  config = finetune_common.get_base('retrieval')
  config.model['use_region_layernorm'] = True
  # The final model only: the coarse + fine evaluation is long.
  finetune_common.set_evals(config, ('test',), every=0)
  config.batch_size = 64
  config.num_epochs = 10
  config.optimizer.lr = 4e-5
  config.checkpoint_every = 400
  config.data.truncate_regions = True  # VinVL detections: keep the first, as the authors do
  return config
