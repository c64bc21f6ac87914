r"""Tiny VQA fine-tune on ShapesWorld questions (colour, shape, count, existence, relation), CPU.

Command (after the tiny pre-training run in /tmp/mvp_tiny):

  python main.py --config=configs/vqa_shapesworld.py --workdir=/tmp/ft_vqa \
      --config.init_from=/tmp/mvp_tiny

`init_from` is required (the pre-training run; its dataset gives the vocabulary); `:scratch`
trains the same budget from random weights; `:smoke` is a seconds-long test run.
300 steps of batch 32, BCE over the ShapesWorld answer vocabulary, answer head's transform from the
MLM head; writes `vqa_predictions_val.json`. Measured (2 shared CPU cores, under 2 minutes): val
accuracy 0.356 from the quickstart /tmp/mvp_tiny (1,500 steps), 0.278 from scratch (800 questions).
"""

import ml_collections

from configs import finetune_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = finetune_common.shapesworld('vqa', arg)
  config.vqa_init_from_mlm = True  # used only when there is an init_from
  return config
