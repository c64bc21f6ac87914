r"""Tiny MVPTR pre-trained on the built-in ShapesWorld dataset, on a laptop CPU.

Command (generates ShapesWorld into the workdir on first use, then trains and evaluates):

  python main.py --config=configs/mvp_tiny.py --workdir=/tmp/mvp_tiny

600 steps at lr 1e-3, with captions that are true of another image of the batch left out of the
ITC denominators and the ITM negatives (`data.true_matches='truth'`), and ITM negatives sampled
from softmax(sim / 0.3) (`negative_temperature`; with the authors' hardest ones ITM stays at
chance at this size, README Quickstart). At the end main.py prints truth-aware R@1 both ways,
grounding and ITM accuracy beside their chance levels and draws `{workdir}/grounding.png`.
Measured on the 2-core CPU machine with nothing else running (4 min 42 s wall including data
generation, 2.3 GB peak RSS): on val (200 images, 600 captions) truth-aware R@1 t2i 0.313 / i2t 0.325 (chance 0.044), own-image R@1 t2i
0.093 / i2t 0.105 (chance 0.005), grounding 0.466 (chance 0.170), ITM 0.834 on truth-checked
own/random pairs and 0.509 on the reranked ones (balanced, chance 0.5), 0.732 in training, MLM /
MCR 0.608 / 0.546; the README has the full table.
`:smoke` makes a seconds-long run for tests. Retrieval and grounding are evaluated on clean
(uncorrupted) val inputs, MLM/MCR accuracy on val corrupted with a fixed seed.
"""

import ml_collections

from configs import mvp_base
from configs import switches


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  smoke = 'smoke' in switches.parse(arg, ('smoke',), 'configs/mvp_tiny.py')
  config = mvp_base.get_config()
  config.model = dict(vocab_size=-1, word_vocab_size=-1, vocab_multiple=1, hidden_size=128,
                      num_heads=4, mlp_dim=256, num_text_layers=2, num_visual_layers=2,
                      num_cross_layers=2,
                      max_position_embeddings=64, type_vocab_size=2, region_feature_dim=134,
                      use_region_layernorm=True, dropout_rate=0.1, attention_dropout_rate=0.1,
                      dtype='float32', remat=False)
  config.data = ml_collections.ConfigDict(dict(
      kind='shapesworld', directory='', train_split='train',
      max_seq_length=20, max_phrases=6, max_tag_length=8, max_img_seq_length=7,
      mask_prob=0.15,
      # Captions true of another image of the batch are no ITC / ITM negatives
      # (input_pipeline/true_matches.py): 'truth' (ShapesWorld's scene graphs), 'duplicates', 'none'.
      true_matches='truth', max_true_meanings=256,
      shapesworld=dict(num_train_images=8000, num_val_images=200, feature_dim=134,
                       image_size=64, captions_per_image=3, seed=0)))
  config.batch_size = 64
  config.eval_batch_size = 128
  config.total_steps = 600
  config.schedule = 'joint'
  config.stage1_steps = 0
  config.negatives = 'global'
  # None: the hardest in-batch ITM negatives (the authors); T: sampled from softmax(sim / T).
  # At this size the hardest negatives give ITM nothing to learn from (README, Quickstart): 0.3.
  config.negative_temperature = ml_collections.config_dict.placeholder(float)
  config.negative_temperature = 0.3
  config.optimizer.update(lr=1e-3, warmup_steps=50, grad_clip_norm=1.0)
  config.mesh_shape = (-1, 1, 1)
  config.sharding_rules = 'data_parallel'
  config.log_every = 50
  # The tiny ITM head alone is weak: rerank by ITM + contrastive.
  config.evals = mvp_base.pretraining_evals(every=600, top_k=16, add_contrastive=True)
  config.checkpoint_every = 600
  config.keep_checkpoints = 2
  if smoke:
    config.data.shapesworld.update(num_train_images=64, num_val_images=16)
    config.model.update(hidden_size=32, mlp_dim=64, num_text_layers=1, num_visual_layers=1,
                        num_cross_layers=1)
    config.batch_size, config.eval_batch_size = 8, 16
    config.total_steps, config.log_every = 6, 3
    config.checkpoint_every = 3
    config.optimizer.warmup_steps = 2
    config.evals = mvp_base.pretraining_evals(every=6, top_k=4, add_contrastive=True)
    config.negative_temperature = None  # the authors' hardest negatives in the smoke tests
  return config
