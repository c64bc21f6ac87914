"""User-facing helpers: load the authors' checkpoints and run the model on a batch of arrays."""

import functools
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax

from mvp_jax import convert
from mvp_jax.config import ModelConfig
from mvp_jax.model import MVPPretrainingModel

Params = Dict[str, Any]


def load_checkpoint(source: Union[str, Mapping[str, Any]],
                    config: Optional[ModelConfig] = None,
                    **config_overrides) -> Tuple[ModelConfig, Params]:
  """Loads an authors' PyTorch checkpoint (file, directory or state dict) into our params.

  Args:
    source: path to `pytorch_model.bin` / `.safetensors` / golden-style `.npz`, a directory
      holding one, or an in-memory {torch name: array} state dict.
    config: the model config; inferred from the tensor shapes when None (heads default to
      hidden/64, override with `num_heads=...`).
    **config_overrides: fields to override in the inferred config.

  Returns:
    (config, params) with params a nested dict of float32 arrays for `MVPPretrainingModel`.
    A backbone-only checkpoint (`BiImageBertRep`) gives params with only the `backbone` entry.
  """
  state = convert.strip_module_prefix(
      convert.load_state_dict(source) if isinstance(source, str) else dict(source))
  if config is None:
    config = convert.infer_config(state, **config_overrides)
  elif config_overrides:
    config = config.replace(**config_overrides)
  has_heads = any(k.startswith(('cls.', 'half_mlm.')) for k in state)
  entries = (convert.pretraining_entries(config) if has_heads
             else convert.backbone_entries(config))
  return config, convert.torch_to_params(state, config, entries)


@functools.partial(jax.jit, static_argnames=('config', 'run_cross', 'return_layer'))
def run_backbone(config: ModelConfig, params: Params, batch: Mapping[str, Any],
                 run_cross: bool = True, return_layer: Optional[int] = None) -> Dict[str, Any]:
  """Backbone outputs (eval mode) for a batch of arrays (keys of `input_pipeline/features.py`).

  Returns txt_encoder_output, vis_encoder_output, text_embedding, visual_embedding, sim_mat,
  logit_scale and (with `run_cross`) cross_sequence_output, pooled_output, mid_output.
  """
  backbone_params = params['backbone'] if 'backbone' in params else params
  model = MVPPretrainingModel(config)
  return model.apply({'params': {'backbone': nn.unbox(backbone_params)}}, dict(batch),
                     run_cross=run_cross, return_layer=return_layer,
                     method=lambda m, *a, **k: m.backbone(*a, **k))


@functools.partial(jax.jit, static_argnames=('config',))
def run_pretraining_heads(config: ModelConfig, params: Params, batch: Mapping[str, Any],
                          hard_txt_index=None, hard_img_index=None) -> Dict[str, Any]:
  """All pre-training outputs in eval mode; ITM negatives only when their indices are given."""
  hard = None if hard_txt_index is None else (hard_txt_index, hard_img_index)
  return MVPPretrainingModel(config).apply({'params': nn.unbox(params)}, dict(batch),
                                           hard_negatives=hard)
