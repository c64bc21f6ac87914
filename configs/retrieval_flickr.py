r"""Flickr30k image-text retrieval fine-tuning, evaluated on the 1k test split (spec §3.3, §4.1).

Data, once, from the Flickr30K images and Karpathy's dataset_flickr30k.json in /data/flickr30k
(input_pipeline/sources; regions + tags from SigLIP, or --features of your own):

  python -m input_pipeline.sources.build extract --source=karpathy_flickr30k \
      --manual_dir=/data/flickr30k --checkpoint=/ckpt/siglip-base-patch16-224 \
      --features=/data/flickr_features
  python -m input_pipeline.sources.build build --source=karpathy_flickr30k \
      --manual_dir=/data/flickr30k --features=/data/flickr_features --data_dir=/data/tfds \
      --pretrain_out=/data/flickr_mvp --tokenizer=/ckpt/bert-base-uncased/vocab.txt \
      --concepts=/ckpt/mvptr/id2phrase.json --retrieval_out=/data/flickr_retrieval \
      --retrieval_splits=train=train,val=val,test=test

(or the VinVL-feature importers of input_pipeline.tasks, the base model pre-trained or converted
from the authors' `mvp_base_for_fk`). Command:

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
