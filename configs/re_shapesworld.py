r"""Tiny referring-expression fine-tune on ShapesWorld (CPU).

Command (after the tiny pre-training run in /tmp/mvp_tiny):

  python main.py --config=configs/re_shapesworld.py --workdir=/tmp/ft_re \
      --config.init_from=/tmp/mvp_tiny

`init_from` is required (the pre-training run; its dataset gives the vocabulary); `:scratch`
trains the same budget from random weights; `:smoke` is a seconds-long test run.
300 steps of batch 32, MSE between the region cosines and IoUs. The tiny model has 2 cross layers,
so `phrase_layer` is 1 (the last; the base model's default is 2 of 6). Measured (2 shared CPU
cores, about 1.5 minutes): accuracy@IoU>=0.5 0.685 from the quickstart /tmp/mvp_tiny, 0.393 from scratch,
chance 0.173 (400 expressions).
"""

import ml_collections

from configs import finetune_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = finetune_common.shapesworld('re', arg)
  config.phrase_layer = 0 if 'smoke' in (arg or '').split(',') else 1
  config.num_labels = 1
  return config
