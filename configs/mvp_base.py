r"""MVPTR base pre-training on VinVL-format data (the paper's base setting, spec §1.1 and §3.2).

Command (a TPU VM or GPU host; data converted once with `python -m input_pipeline.import_vinvl`):

  python main.py --config=configs/mvp_base.py --workdir=gs://bucket/mvp_base \
      --config.data.directory=/data/mvp_records

Multi-host TPU pods: run the same command on every host with `--config.distributed=True`.
Model: 768 hidden, 12 heads, 3072 MLP, 6+6+6 layers, 86,051 embedding rows (30,522 words plus the
authors' concepts; vocab sizes are read off the dataset's vocab.txt / id2phrase.json when -1),
2054-d regions, 247.9M parameters. AdamW β=(0.9, 0.999), eps 1e-8, weight decay 0.01 (not on
biases and LayerNorm), linear warmup and decay, global batch 1024, lengths 35+5 / 20 / 50.
The authors' step count and learning rate for the released model are unknown (spec §8); the
defaults here are their script's (lr 5e-5) with 1M steps. Runtime and results were not measured
here (no accelerator); on this project's CPU machine one step of batch 8 takes about 30 s.
"""

import ml_collections

from configs import switches


def pretraining_evals(every: int, top_k: int, add_contrastive: bool, split: str = 'val'):
  """Zero-shot retrieval (clean inputs), MLM/MCR accuracy (fixed-seed corruption) and phrase
  grounding (clean) on `split`, every `every` steps and at the end."""
  return dict(
      retrieval=dict(type='retrieval', split=split, every=every, top_k_images=top_k,
                     top_k_texts=top_k, add_contrastive=add_contrastive, prefix='retrieval'),
      token_accuracy=dict(type='token_accuracy', split=split, every=every, prefix=split),
      grounding=dict(type='grounding', split=split, every=every, prefix=split))


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """`arg='runlocal'` shrinks the model and swaps in a small ShapesWorld for a CPU smoke run."""
  runlocal = 'runlocal' in switches.parse(arg, ('runlocal',), 'configs/mvp_base.py')
  config = ml_collections.ConfigDict()
  config.task = 'pretrain'
  config.seed = 42
  config.distributed = False

  # vocab_multiple: word table and decoders padded to a multiple of 128 rows (shardable over
  # `tensor`; padding logits masked, exports keep the authors' row counts).
  config.model = dict(vocab_size=-1, word_vocab_size=-1, vocab_multiple=128, hidden_size=768,
                      num_heads=12, mlp_dim=3072, num_text_layers=6, num_visual_layers=6,
                      num_cross_layers=6,
                      max_position_embeddings=512, type_vocab_size=2, region_feature_dim=2054,
                      use_region_layernorm=False, dropout_rate=0.1, attention_dropout_rate=0.1,
                      dtype='bfloat16', remat=True,
                      # MLM / MCR heads on the gathered masked positions only (12% fewer FLOPs
                      # per step at batch 8, equal losses); slots sized from data.mask_prob.
                      prediction_positions='masked')

  config.data = ml_collections.ConfigDict(dict(
      kind='records', directory='', train_split='train',
      max_seq_length=35, max_phrases=5, max_tag_length=20, max_img_seq_length=50,
      mask_prob=0.15, shapesworld={},
      # VinVL detections can exceed max_img_seq_length; the authors keep the first ones.
      truncate_regions=True))

  config.batch_size = 1024          # global
  config.eval_batch_size = 512
  config.grad_accum_steps = 1
  config.total_steps = 1_000_000
  config.schedule = 'joint'         # all five losses every step, as the authors' code
  config.stage1_steps = 0           # with schedule='two_stage': steps of stage 1
  config.loss_weights = dict(mcr=1.0, itc=1.0, mlm=1.0, itm=1.0, wpg=1.0)
  config.negatives = 'local'        # ITC/ITM/WPG negatives per data shard, as the original

  config.optimizer = ml_collections.ConfigDict(dict(
      lr=5e-5, warmup_steps=10_000, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=10.0, scale_lr_by_batch=False, reference_batch_size=1024))

  config.mesh_shape = (-1, 1, 1)    # (data, fsdp, tensor)
  config.sharding_rules = 'fsdp'
  config.log_every = 100
  # Rerank score: the ITM probability (authors), or + the contrastive cosine.
  config.evals = pretraining_evals(every=10_000, top_k=64, add_contrastive=False)
  config.checkpoint_every = 5_000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  config.init_from = ''
  config.init_skip = ()
  config.peak_flops = 0.0           # of ONE device; 0 = look the device up (TPU/GPU table)
  config.profile = False
  config.xla_cpu_scheduler = 'auto'  # CPU only: memory-optimised without remat (xla_options)

  if runlocal:  # the same code path on a CPU, on a small 2054-d ShapesWorld
    config.model.update(hidden_size=64, num_heads=4, mlp_dim=128, num_text_layers=1,
                        num_visual_layers=1, num_cross_layers=1, dtype='float32',
                        remat=False, max_position_embeddings=64)
    config.data.update(kind='shapesworld', max_seq_length=20, max_phrases=6, max_tag_length=8,
                       max_img_seq_length=7,
                       shapesworld=dict(num_train_images=64, num_val_images=16,
                                        feature_dim=2054, captions_per_image=3))
    config.evals = pretraining_evals(every=4, top_k=4, add_contrastive=False)
    config.batch_size, config.eval_batch_size = 8, 8
    config.total_steps, config.log_every = 4, 2
    config.checkpoint_every = 4
    config.optimizer.warmup_steps = 1
  return config
