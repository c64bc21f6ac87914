"""`config.init_from`: initialise a fresh run's parameters from a converted checkpoint.

Accepted: the authors' PyTorch checkpoints (`pytorch_model.bin`, `.safetensors`, a folder holding
one, or a golden-style `.npz`), converted on the fly by `convert.py`. Every parameter of the
model must be provided and every provided tensor must be used, unless its path (ours, 'a/b/c')
or torch name matches one of the `skip` regexes; skipped model parameters keep their fresh
initialisation. Loaded and skipped parameters are logged.
"""

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from flax import traverse_util

from mvp_jax import convert
from mvp_jax.config import ModelConfig


class InitFromError(ValueError):
  """The checkpoint does not fit the model (missing / unexpected / mis-shaped parameters)."""


def load_into(params: Any, path: str, model_cfg: ModelConfig, skip: Sequence[str] = ()) -> Any:
  """Returns `params` (boxed, sharded) with the checkpoint's values put in; see module doc."""
  state = convert.load_state_dict(path)
  entries = convert.pretraining_entries(model_cfg)
  by_torch = {e.torch_name: e for e in entries}
  skipped = lambda name: any(re.search(p, name) for p in skip)
  unexpected = [k for k in state if k not in by_torch and not skipped(k)]
  missing = [e.torch_name for e in entries
             if e.torch_name not in state and not skipped('/'.join(e.path))
             and not skipped(e.torch_name)]
  if missing or unexpected:
    raise InitFromError(
        f'init_from={path}: {len(missing)} missing parameters {missing[:8]} and '
        f'{len(unexpected)} unexpected tensors {unexpected[:8]}. Pass regexes in '
        f'config.init_skip to leave some freshly initialised or ignored.')
  usable = [e for e in entries if e.torch_name in state and not skipped('/'.join(e.path))
            and not skipped(e.torch_name)]
  converted = traverse_util.flatten_dict(
      convert.torch_to_params({e.torch_name: state[e.torch_name] for e in usable}, model_cfg,
                              usable))
  flat = traverse_util.flatten_dict(params)
  loaded, mismatched = [], []
  for key, value in converted.items():
    target = flat[key]
    current = nn.unbox(target)
    if current.shape != value.shape:
      mismatched.append(f'{"/".join(key)}: checkpoint {value.shape}, model {current.shape}')
      continue
    new = jax.device_put(np.asarray(value, current.dtype), current.sharding)
    flat[key] = target.replace_boxed(new) if isinstance(target, nn.Partitioned) else new
    loaded.append('/'.join(key))
  if mismatched:
    raise InitFromError(f'init_from={path}: shape mismatch: {mismatched[:8]}')
  logging.info('init_from %s: loaded %d parameters; kept fresh: %s', path, len(loaded),
               sorted('/'.join(k) for k in flat if '/'.join(k) not in set(loaded)))
  return traverse_util.unflatten_dict(flat)
