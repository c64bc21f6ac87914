"""The one-stage schedule of the fine-tuning tasks: every parameter trains at every step."""

from typing import Any, Mapping, Tuple

import flax.linen as nn
import jax
import ml_collections

from mvp_jax.config import ModelConfig


def model_config(model_cfg: ModelConfig, info: Any = None) -> ModelConfig:
  del info
  return model_cfg


def stages(config: ml_collections.ConfigDict) -> Tuple[int, ...]:
  del config
  return (1,)


def stage_at(config: ml_collections.ConfigDict, step: int) -> int:
  del config, step
  return 1


def frozen(config: ml_collections.ConfigDict, stage: int) -> Tuple[str, ...]:
  del config, stage
  return ()



def init_params(model: nn.Module, rng: jax.Array, batch: Mapping[str, Any]) -> Any:
  """Boxed initial parameters of a task model on `batch` (only the shapes matter)."""
  return model.init(rng, batch)['params']
