"""Image-text retrieval fine-tuning (spec §4.1): ITC + matching classifier on hard negatives.

`RetrievalModel`'s `classifier` reads dropout(cat(pooled, hard_pooled)), label 1 = matched.
"""

from typing import Tuple

import flax.linen as nn
import jax
import ml_collections

from mvp_jax import convert
from mvp_jax import metrics as metrics_lib
from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream.models import RetrievalModel
from mvp_jax.tasks.single_stage import frozen, init_params, model_config, stage_at, stages  # pylint: disable=unused-import

NAME = 'retrieval'
BATCH_KEYS: Tuple[str, ...] = ()
HOST_KEYS = ('example_index',)
# Spec §1.2 (Flickr; COCO retrieval trains with max_tag_length 30).
DEFAULT_LENGTHS = dict(max_seq_length=50, max_phrases=5, max_tag_length=20, max_img_seq_length=50)


def create_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> nn.Module:
  del config
  return RetrievalModel(model_cfg)


def loss_fn(model: nn.Module, config: ml_collections.ConfigDict, *, stage: int,
            num_groups: int):
  """L_ITC + CE of the classifier on [positives; in-group hardest negatives]."""
  del config, stage

  def fn(params, batch, rng):
    dropout_rng, negatives_rng = jax.random.split(rng)
    out = model.apply({'params': params}, batch, deterministic=False,
                      hard_negatives=negatives_rng, negative_groups=num_groups,
                      rngs={'dropout': dropout_rng})
    loss, metrics = task_losses.retrieval_loss(out['sim_mat'], out['logit_scale'],
                                               out['match_logits'], num_groups)
    return loss, dict(metrics, loss=loss)

  return fn


def metrics(stage: int):
  del stage
  return metrics_lib.collection(('loss_itc', 'loss_itm'), ('itc', 'itm'))


def torch_entries(model_cfg: ModelConfig):
  return convert.task_entries(NAME, model_cfg)
