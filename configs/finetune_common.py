"""Fields shared by every fine-tuning config (spec §3.3); each task config patches these.

Not a runnable config itself: `get_base(task)` is imported by `configs/<task>_*.py`.

`init_from` has no default: a task run must say what it starts from (`--config.init_from=PATH`,
an mvp-jax run directory or an authors' checkpoint, or `--config.init_from=''` for random
weights); the trainer refuses a run that leaves it unset, naming the flag.
"""

import ml_collections
from ml_collections import config_dict

from configs import switches
from mvp_jax import tasks

# The evaluator type of each task (mvp_jax.evaluators / config.evals).
EVAL_TYPES = {'retrieval': 'retrieval', 'vqa': 'vqa', 've': 've', 're': 're'}

# vocab_multiple: the vocabulary padded to a multiple of 128 rows, as in configs/mvp_base.py.
BASE_MODEL = dict(vocab_size=-1, word_vocab_size=-1, vocab_multiple=128, hidden_size=768,
                  num_heads=12, mlp_dim=3072, num_text_layers=6, num_visual_layers=6,
                  num_cross_layers=6,
                  max_position_embeddings=512, type_vocab_size=2, region_feature_dim=2054,
                  use_region_layernorm=False, dropout_rate=0.1, attention_dropout_rate=0.1,
                  dtype='float32', remat=False, cross_tag_slots=0)
# The tiny ShapesWorld model of configs/mvp_tiny.py, so /tmp/mvp_tiny-style runs initialise it.
TINY_MODEL = dict(BASE_MODEL, vocab_multiple=1, hidden_size=128, num_heads=4, mlp_dim=256,
                  num_text_layers=2, num_visual_layers=2, num_cross_layers=2,
                  max_position_embeddings=64, region_feature_dim=134, use_region_layernorm=True)


def get_base(task: str) -> ml_collections.ConfigDict:
  """AdamW (eps 1e-8, wd 0.05 off biases/LayerNorm), no warmup, clip 1.0, seed 88 (§3.1, §3.3).

  Global batch = the authors' per-GPU batch: their GPU count is unknown (spec §8.6).
  """
  lengths = tasks.get(task).DEFAULT_LENGTHS
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 88
  config.distributed = False
  config.model = dict(BASE_MODEL)
  config.data = ml_collections.ConfigDict(dict(
      kind='records', directory='', train_split='train', tags_as_list=False,
      pretraining_dir='', shapesworld={},
      # False: a dataset with more regions per image than max_img_seq_length is refused
      # (the VinVL task configs set True: the authors keep the first detections).
      truncate_regions=False, **lengths))
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 25
  config.total_steps = 0            # 0: num_epochs x batches per epoch (t_total of §3.3)
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=4e-5, warmup_steps=0, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=1.0, scale_lr_by_batch=False, reference_batch_size=64))
  config.mesh_shape = (-1, 1, 1)
  config.sharding_rules = 'data_parallel'
  config.negatives = 'local'        # retrieval ITC / hard negatives per data shard (DataParallel)
  config.log_every = 100
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  config.async_checkpointing = True
  config.init_from = config_dict.placeholder(str)  # required: a run of ours, a torch file, ''
  config.vqa_init_from_mlm = False
  config.phrase_layer = 2
  config.num_labels = 0             # 0: the task's default (VE 3, RE 1)
  set_evals(config, ('val',), every=1000)
  return config


def set_evals(config: ml_collections.ConfigDict, splits, every: int, **options) -> None:
  """`config.evals`: the task's evaluator on each split, every `every` steps (0 = at the end).

  Retrieval's defaults are the authors' (top 64 images per caption, 128 captions per image
  re-scored by the ITM classifier alone); `options` override them (or add VQA's `predictions`).
  """
  kind = EVAL_TYPES[config.task]
  defaults = {'retrieval': dict(top_k_images=64, top_k_texts=128, add_contrastive=False,
                                score_batch_size=256),
              'vqa': dict(predictions=True)}.get(kind, {})
  config.evals = {split: dict(type=kind, split=split, every=every, prefix=f'{split}/{kind}',
                                **dict(defaults, **options))
                  for split in splits}


def shapesworld(task: str, arg: str, **data) -> ml_collections.ConfigDict:
  """A tiny CPU fine-tune on ShapesWorld task data; `arg` may hold `smoke` and `scratch`.

  The ShapesWorld task data takes its vocabulary from the pre-training dataset of the
  `init_from` run (or `data.pretraining_dir`).
  """
  chosen = switches.parse(arg, ('smoke', 'scratch'), f'configs/{task}_shapesworld.py')
  config = get_base(task)
  config.model = dict(TINY_MODEL)
  config.data.kind = 'shapesworld'
  # The pre-training lengths of configs/mvp_tiny.py (VQA appends the tags after [SEP]).
  config.data.update(max_seq_length=20, max_phrases=6, max_tag_length=8, max_img_seq_length=7)
  config.data.pretraining_dir = ''  # '': the init_from run's dataset (vocabulary, generation)
  config.data.shapesworld = dict(num_train=1000, num_val=200, num_test=0)
  config.data.update(data)
  config.batch_size, config.eval_batch_size = 32, 64
  config.num_epochs = 0
  config.total_steps = 300
  config.optimizer.update(lr=2e-4, warmup_steps=20, reference_batch_size=32)
  config.negatives = 'global'
  config.log_every, config.checkpoint_every = 50, 300
  retrieval_options = dict(top_k_images=16, top_k_texts=16, score_batch_size=64)
  set_evals(config, ('val',), every=0, **(retrieval_options if task == 'retrieval' else {}))
  if 'scratch' in chosen:
    config.init_from = ''
  if 'smoke' in chosen:
    config.model.update(hidden_size=32, mlp_dim=64, num_text_layers=1, num_visual_layers=1,
                        num_cross_layers=1)
    config.init_from = ''
    config.batch_size, config.eval_batch_size = 8, 16
    config.total_steps, config.log_every, config.checkpoint_every = 3, 1, 3
    config.optimizer.warmup_steps = 1
    if task == 'retrieval':
      set_evals(config, ('val',), every=0, top_k_images=4, top_k_texts=4, score_batch_size=16)
    config.async_checkpointing = False
  return config
