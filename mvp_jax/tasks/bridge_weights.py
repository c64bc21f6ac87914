"""`load(source, target, ...)` of the CONTRACTS.md `mvp_jax.weights` interface, on today's
loaders (`init_from.load_into` for pre-training, the task loader formerly in finetune.py).

The weights helper's `mvp_jax.weights.load` replaces this module at the merge (the trainer then
imports `mvp_jax.weights`). Params in and out are unboxed.
"""

import dataclasses
import os
from typing import Any, Dict, List, Sequence, Tuple

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from mvp_jax import checkpointing
from mvp_jax import convert
from mvp_jax import init_from as init_from_lib
from mvp_jax.config import ModelConfig


@dataclasses.dataclass
class LoadReport:
  source_kind: str
  loaded: List[str]
  fresh: List[str]
  skipped: List[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    return (f'{self.source_kind}: loaded {len(self.loaded)} parameters; fresh: {self.fresh}'
            + (f'; skipped: {self.skipped}' if self.skipped else ''))


def _flat_paths(tree) -> List[str]:
  return ['/'.join(k) for k in traverse_util.flatten_dict(tree)]


def _source_params(path: str, task: str, model_cfg: ModelConfig) -> Tuple[Dict, str]:
  """Flat {our path: array} of a run directory of ours or of an authors' torch checkpoint."""
  if os.path.exists(os.path.join(path, checkpointing.MODEL_CONFIG_FILE)):
    _, params, step = checkpointing.load_trained(path)
    return traverse_util.flatten_dict(params), f'our run (step {step})'
  state = convert.load_state_dict(path)
  task_table = convert.task_entries(task, model_cfg)
  head_names = [e.torch_name for e in task_table if not e.torch_name.startswith('bert.')
                and e.torch_name != 'logit_scale']
  is_task_checkpoint = all(n in state for n in head_names) and 'half_mlm.bias' not in state
  table = task_table if is_task_checkpoint else convert.pretraining_entries(
      model_cfg.replace(qa_num_answers=0))
  usable = [e for e in table if e.torch_name in state]
  converted = convert.torch_to_params({e.torch_name: state[e.torch_name] for e in usable},
                                      model_cfg, usable, ignore_unexpected=('.*',))
  kind = f'torch {task if is_task_checkpoint else "pre-training"} checkpoint'
  return traverse_util.flatten_dict(converted), f'{kind} ({len(usable)} of {len(state)} tensors)'


def _load_task(params: Any, path: str, task: str, model_cfg: ModelConfig,
               vqa_init_from_mlm: bool) -> Tuple[Any, LoadReport]:
  """The backbone (and matching heads) of `path` put into `params`.

  Every backbone parameter except `logit_scale` (absent from the authors' VQA/VE/RE state dicts)
  must come from `path` with the same shape; a head of another shape stays fresh (logged).
  """
  source, kind = _source_params(path, task, model_cfg)
  flat = traverse_util.flatten_dict(params)
  if vqa_init_from_mlm and task == 'vqa':
    for key, value in list(source.items()):
      if key[0] == 'mlm_head' and key[1] in ('transform', 'transform_layernorm'):
        source.setdefault(('answer_head',) + key[1:], value)
  loaded, mismatched = [], []
  for key, current in flat.items():
    if key not in source:
      continue
    value = np.asarray(source[key], current.dtype)
    if value.shape != current.shape:
      mismatched.append(f'{"/".join(key)}: source {value.shape}, model {current.shape}')
      continue
    flat[key] = jax.device_put(value, current.sharding)
    loaded.append(key)
  missing_backbone = [k for k in flat if k[0] == 'backbone' and k not in loaded
                      and k[-1] != 'logit_scale']
  backbone_mismatch = [m for m in mismatched if m.startswith('backbone/')]
  if backbone_mismatch or missing_backbone:
    raise ValueError(f'init_from={path} does not fit the backbone: mismatched '
                     f'{backbone_mismatch[:6]}, missing '
                     f'{["/".join(k) for k in missing_backbone[:6]]}')
  if mismatched:  # e.g. another answer vocabulary: that head starts fresh
    logging.warning('init_from %s: head shapes differ, kept fresh: %s', path, mismatched)
  fresh = sorted('/'.join(k) for k in flat if k not in set(loaded))
  return traverse_util.unflatten_dict(flat), LoadReport(kind, ['/'.join(k) for k in loaded],
                                                        fresh)


def load(source: str, target: Any, *, model_config: ModelConfig, task: str = 'pretrain',
         skip: Sequence[str] = (), vqa_init_from_mlm: bool = False,
         vocab_dir: Any = None) -> Tuple[Any, LoadReport]:
  """(params shaped and sharded like `target`, LoadReport) of checkpoint `source`."""
  del vocab_dir  # the weights module checks vocabularies; today's loaders do not
  if task == 'pretrain':
    params = init_from_lib.load_into(target, source, model_config, skip=skip)
    before, after = traverse_util.flatten_dict(target), traverse_util.flatten_dict(params)
    loaded = ['/'.join(k) for k in after if after[k] is not before[k]]
    fresh = sorted(set(_flat_paths(target)) - set(loaded))
    return params, LoadReport('torch pre-training checkpoint', loaded, fresh, list(skip))
  return _load_task(target, source, task, model_config, vqa_init_from_mlm)
