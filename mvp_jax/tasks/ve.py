"""Visual entailment fine-tuning (SNLI-VE, spec §4.3): cross-entropy of `classifier` on the
pooler; labels contradiction 0, neutral 1, entailment 2. `config.num_labels` 0 = 3."""

import flax.linen as nn
import jax
import ml_collections

from mvp_jax import convert
from mvp_jax import metrics as metrics_lib
from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream.models import VEModel
from mvp_jax.tasks.single_stage import frozen, init_params, model_config, stage_at, stages  # pylint: disable=unused-import

NAME = 've'
BATCH_KEYS = ('label',)
HOST_KEYS = ('example_index',)
DEFAULT_LENGTHS = dict(max_seq_length=70, max_phrases=5, max_tag_length=20, max_img_seq_length=70)


def create_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> nn.Module:
  return VEModel(model_cfg, config.get('num_labels') or 3)


def loss_fn(model: nn.Module, config: ml_collections.ConfigDict, *, stage: int,
            num_groups: int):
  """Mean cross-entropy over the batch."""
  del config, stage, num_groups  # equal-size groups: the batch mean is the mean of group means

  def fn(params, batch, rng):
    dropout_rng, _ = jax.random.split(rng)  # the split of retrieval's (dropout, negatives)
    out = model.apply({'params': params}, batch, deterministic=False,
                      rngs={'dropout': dropout_rng})
    loss, metrics = task_losses.classification_loss(out['class_logits'], batch['label'])
    return loss, dict(metrics, loss=loss, loss_ve=loss)

  return fn


def metrics(stage: int):
  del stage
  return metrics_lib.collection(('loss_ve',), ('ve',))


def torch_entries(model_cfg: ModelConfig):
  return convert.task_entries(NAME, model_cfg)
