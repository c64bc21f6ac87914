"""Visual entailment fine-tuning (SNLI-VE, spec §4.3): cross-entropy of `classifier` on the
pooler; labels contradiction 0, neutral 1, entailment 2. `config.num_labels` 0 = 3."""

import flax.linen as nn
import ml_collections

from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream.models import VEModel
from mvp_jax.tasks import single_stage
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
  return single_stage.head_loss(model, NAME, lambda out, batch: task_losses.classification_loss(
      out['class_logits'], batch['label']))


def metrics(stage: int):
  del stage
  return single_stage.head_metrics(NAME)


def torch_entries(model_cfg: ModelConfig):
  return single_stage.torch_entries_of(NAME, model_cfg)
