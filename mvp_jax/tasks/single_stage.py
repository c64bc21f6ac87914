"""The one-stage schedule of the fine-tuning tasks: every parameter trains at every step."""

from typing import Any, Callable, Mapping, Tuple

import flax.linen as nn
import jax
import ml_collections

from mvp_jax import convert
from mvp_jax import metrics as metrics_lib
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


def head_loss(model: nn.Module, name: str,
              head_loss_fn: Callable[[Mapping[str, Any], Mapping[str, Any]], Tuple[Any, dict]]):
  """`(params, batch, rng) -> (loss, metrics)` of a one-head task: the model in training mode
  (dropout on), then `head_loss_fn(outputs, batch) -> (loss, metrics)`; adds `loss_<name>`."""

  def fn(params, batch, rng):
    dropout_rng, _ = jax.random.split(rng)  # the split of retrieval's (dropout, negatives)
    out = model.apply({'params': params}, batch, deterministic=False,
                      rngs={'dropout': dropout_rng})
    loss, metrics = head_loss_fn(out, batch)
    return loss, dict(metrics, loss=loss, **{f'loss_{name}': loss})

  return fn


def head_metrics(name: str):
  """The clu collection of a one-head task: `loss`, `loss_<name>`, `<name>_accuracy`, ..."""
  return metrics_lib.collection((f'loss_{name}',), (name,))


def torch_entries_of(name: str, model_cfg: ModelConfig):
  return convert.task_entries(name, model_cfg)
