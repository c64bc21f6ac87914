r"""SNLI-VE visual entailment fine-tuning (spec §3.3, §4.3).

Command:

  python main.py --config=configs/snli_ve.py --workdir=/tmp/snli_ve \
      --config.data.directory=/data/snli_ve --config.init_from=/ckpt/mvp_base

lr 4e-5, batch 64, 25 epochs, wd 0.05, dropout 0.1, no warmup, clip 1.0, seed 88; Linear→3 on the
pooler, cross-entropy; lengths 70+5 / 20 / 70. Expected (README, spec §7): 80.30 val / 80.17 test
accuracy. Runtime not measured.
"""

import ml_collections

from configs import finetune_common
from configs import switches


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  switches.parse(arg, (), 'configs/snli_ve.py')
  config = finetune_common.get_base('ve')
  finetune_common.set_evals(config, ('val', 'test'), every=400)
  config.batch_size = 64
  config.num_epochs = 25
  config.optimizer.lr = 4e-5
  config.data.truncate_regions = True  # VinVL detections: keep the first, as the authors do
  return config
