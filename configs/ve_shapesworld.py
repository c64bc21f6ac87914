r"""Tiny visual-entailment fine-tune on ShapesWorld hypotheses (3 classes), CPU.

Command (after the tiny pre-training run in /tmp/mvp_tiny):

  python main.py --config=configs/ve_shapesworld.py --workdir=/tmp/ft_ve \
      --config.init_from=/tmp/mvp_tiny

`init_from` is required (the pre-training run; its dataset gives the vocabulary); `:scratch`
trains the same budget from random weights; `:smoke` is a seconds-long test run.
300 steps of batch 32, cross-entropy on the pooler. Measured (2 shared CPU cores, about 2
minutes): val accuracy 0.928 from the quickstart /tmp/mvp_tiny, 0.905 from scratch (600 hypotheses).
"""

import ml_collections

from configs import finetune_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  return finetune_common.shapesworld('ve', arg)
