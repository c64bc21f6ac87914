"""VQA fine-tuning (spec §4.2): BCE on soft scores over the dataset's answer vocabulary.

The run's ModelConfig records the answer count as `qa_num_answers` (model_config.json), so a
fine-tuned run says what its `answer_head` holds.
"""

import flax.linen as nn
import ml_collections

from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream.models import VQAModel
from mvp_jax.tasks import single_stage
from mvp_jax.tasks.single_stage import frozen, init_params, stage_at, stages  # pylint: disable=unused-import

NAME = 'vqa'
BATCH_KEYS = ('answer_targets', 'question_id')
HOST_KEYS = ('example_index', 'question_id')
DEFAULT_LENGTHS = dict(max_seq_length=128, max_phrases=5, max_tag_length=30,
                       max_img_seq_length=50)


def model_config(model_cfg: ModelConfig, info=None) -> ModelConfig:
  """`qa_num_answers` = the dataset's answer count (from its task info, if given)."""
  if info is not None:
    model_cfg = model_cfg.replace(qa_num_answers=int(info.num_answers))
  if not model_cfg.qa_num_answers:
    raise ValueError('The VQA model needs the answer vocabulary size: the task dataset has no '
                     'answers.json (num_answers 0).')
  return model_cfg


def create_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> nn.Module:
  del config
  if not model_cfg.qa_num_answers:
    raise ValueError('The VQA model needs num_answers (model_cfg.qa_num_answers).')
  return VQAModel(model_cfg, model_cfg.qa_num_answers)


def loss_fn(model: nn.Module, config: ml_collections.ConfigDict, *, stage: int,
            num_groups: int):
  """BCE-with-logits on soft scores, summed over answers, mean over the batch."""
  del config, stage, num_groups  # equal-size groups: the batch mean is the mean of group means
  return single_stage.head_loss(model, NAME, lambda out, batch: task_losses.vqa_loss(
      out['answer_logits'], batch['answer_targets']))


def metrics(stage: int):
  del stage
  return single_stage.head_metrics(NAME)


def torch_entries(model_cfg: ModelConfig):
  return single_stage.torch_entries_of(NAME, model_cfg)
