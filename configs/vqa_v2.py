r"""VQA v2 fine-tuning on train+val with the VinVL answer vocabulary (spec §3.3, §4.2, §10.1).

Command:

  python main.py --config=configs/vqa_v2.py --workdir=/tmp/vqa_v2 \
      --config.data.directory=/data/vqa_v2 --config.init_from=/ckpt/mvp_base_for_vqa

lr 5e-5, batch 32, 25 epochs, wd 0.05, dropout **0.3**, no warmup, clip 1.0, seed 88; BCE on soft
scores (3129 answers, read off the dataset's answers.json); the answer head's transform starts from
the MLM head (`vqa_init_from_mlm`); lengths 128+5 / 30 / 50. `:quirk` sets cross_tag_slots=10, the
authors' tag-slot bug (spec §10.1), to reproduce their fine-tuning exactly. Writes
`vqa_predictions_test.json` ([{question_id, answer}], EvalAI; test has no answers, so it is not
scored) and scores `val` every 4000 steps. val is inside trainval, so that score tracks the fit;
for a held-out figure train with `--config.data.train_split=train`. Expected (README, spec §7):
test-dev 76.16, test-std 76.36 (EvalAI). Runtime not measured.
"""

import ml_collections

from configs import finetune_common
from configs import switches


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  quirk = 'quirk' in switches.parse(arg, ('quirk',), 'configs/vqa_v2.py')
  config = finetune_common.get_base('vqa')
  config.model.update(dropout_rate=0.3, cross_tag_slots=10 if quirk else 0)
  config.data.update(train_split='trainval')
  # val has answers: scored (and its predictions written). test has none: predictions only.
  config.evals = dict(
      val=dict(type='vqa', split='val', every=4000, predictions=True),
      test=dict(type='vqa', split='test', every=0, predictions=True, score=False))
  config.batch_size = 32
  config.num_epochs = 25
  config.optimizer.update(lr=5e-5, reference_batch_size=32)
  config.vqa_init_from_mlm = True
  config.data.truncate_regions = True  # VinVL detections: keep the first, as the authors do
  return config
