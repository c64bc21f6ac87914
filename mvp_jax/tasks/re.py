"""Referring expressions fine-tuning (spec §4.4): MSE between the cosine of [CLS] and each
region after cross layer `config.phrase_layer` and the region's IoU with the target box.
`config.num_labels` 0 = 1 (the unused `classifier` of the authors' checkpoints)."""

import flax.linen as nn
import ml_collections

from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream.models import REModel
from mvp_jax.tasks import single_stage
from mvp_jax.tasks.single_stage import frozen, init_params, model_config, stage_at, stages  # pylint: disable=unused-import

NAME = 're'
BATCH_KEYS = ('region_iou', 'target_box')
HOST_KEYS = ('example_index',)
DEFAULT_LENGTHS = dict(max_seq_length=30, max_phrases=5, max_tag_length=20, max_img_seq_length=50)


def create_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> nn.Module:
  phrase_layer = config.get('phrase_layer', 2)
  if not 0 <= phrase_layer < model_cfg.num_cross_layers:
    raise ValueError(f'phrase_layer {phrase_layer} outside [0, {model_cfg.num_cross_layers}): '
                     f'the model has {model_cfg.num_cross_layers} cross-modal layers.')
  return REModel(model_cfg, phrase_layer, config.get('num_labels') or 1)


def loss_fn(model: nn.Module, config: ml_collections.ConfigDict, *, stage: int,
            num_groups: int):
  """MSE over valid regions, per group under `local` negatives (`downstream/losses.py`)."""
  del config, stage
  return single_stage.head_loss(model, NAME, lambda out, batch: task_losses.referring_loss(
      out['region_logits'], batch['region_iou'], num_groups))


def metrics(stage: int):
  del stage
  return single_stage.head_metrics(NAME)


def torch_entries(model_cfg: ModelConfig):
  return single_stage.torch_entries_of(NAME, model_cfg)
