r"""MVPTR base pre-training on CC3M-style img2dataset webdataset shards with SigLIP B/16 regions.

Data, once (input_pipeline/sources; the shards from img2dataset --output_format webdataset, the
BERT vocab.txt and the authors' id2phrase.json, or --concepts omitted to build concepts from the
built-in phrases):

  # 1. regions on accelerators, every host the same command, resumable per shard
  python -m input_pipeline.sources.build extract --source=webdataset \
      --shards='/data/cc3m/{00000..00331}.tar' --checkpoint=/ckpt/siglip-base-patch16-224 \
      --features=/data/cc3m_features
  # 2. records on CPUs with Apache Beam (here 16 local worker processes; Dataflow / Flink /
  #    Spark by --beam_pipeline_options=runner=..., see input_pipeline/sources/build.py)
  python -m input_pipeline.sources.build build --source=webdataset \
      --shards='/data/cc3m/{00000..00331}.tar' --features=/data/cc3m_features \
      --data_dir=/data/tfds --beam \
      --beam_pipeline_options=direct_num_workers=16,direct_running_mode=multi_processing \
      --pretrain_out=/data/cc3m_mvp --tokenizer=/ckpt/bert-base-uncased/vocab.txt \
      --concepts=/ckpt/mvptr/id2phrase.json

Training:

  python main.py --config=configs/pretrain_cc3m.py --workdir=gs://bucket/mvp_cc3m \
      --config.data.directory=/data/cc3m_mvp

CC3M captions are one per image (2.9-3.3M images as downloaded); lengths 35+5 / 20 / 50 as the
base setting, regions 7 x 7 + 1 = 50 of 768 + 6 dims. The shards have no held-out split, so the
in-training validation reads `train` (`val_split`); evaluate retrieval on COCO / Flickr30K
(configs/retrieval_coco.py, retrieval_flickr.py). Nothing here was measured on real data: see
the README section "Real data at scale" for the preparation throughput model.
`:runlocal` is mvp_base_siglip's CPU smoke run.
"""

import ml_collections

from configs import mvp_base_siglip


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = mvp_base_siglip.get_config(arg)
  if 'runlocal' not in (arg or ''):
    config.data.update(directory='/data/cc3m_mvp', train_split='train', val_split='train')
  return config
