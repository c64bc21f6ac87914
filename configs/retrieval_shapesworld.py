r"""Tiny image-text retrieval fine-tune on ShapesWorld (CPU), from the tiny pre-trained model.

Command (pre-train first with `python main.py --config=configs/mvp_tiny.py --workdir=/tmp/mvp_tiny`):

  python main.py --config=configs/retrieval_shapesworld.py --workdir=/tmp/ft_retrieval \
      --config.init_from=/tmp/mvp_tiny

`init_from` is required (the pre-training run; its dataset gives the vocabulary); `:scratch`
trains the same budget from random weights; `:smoke` is a seconds-long test run.
300 steps of batch 32 (ITC + ITM with hard negatives, label 1 = matched), then the two-stage
evaluation on val (200 images, 600 captions, top 16 re-scored). Measured (2 shared CPU cores,
about 2.5 minutes): t2i R@1 0.035 / R@10 0.50, i2t R@1 0.12 / R@10 0.64 from the quickstart's
/tmp/mvp_tiny (1,500 steps); from scratch 0.005 / 0.05 and 0.000 / 0.045.
"""

import ml_collections

from configs import finetune_common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  return finetune_common.shapesworld('retrieval', arg)
