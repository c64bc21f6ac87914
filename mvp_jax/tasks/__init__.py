"""The tasks the trainer runs, one module each, found by name: `tasks.get('vqa')`.

A task module gives everything `mvp_jax/train.py` needs to know about a task:

  NAME                  'pretrain' | 'retrieval' | 'vqa' | 've' | 're' (= `config.task`)
  BATCH_KEYS            batch columns beyond `input_pipeline.features.BATCH_KEYS`
  HOST_KEYS             batch columns that stay on the host (bookkeeping ids)
  DEFAULT_LENGTHS       dict(max_seq_length, max_phrases, max_tag_length, max_img_seq_length)
  model_config(model_cfg, info) -> ModelConfig   the run's config (e.g. VQA's answer count)
  create_model(config, model_cfg) -> flax module (classes of mvp_jax.model /
                        mvp_jax.downstream.models; parameter paths as the converter expects)
  init_params(model, rng, batch) -> boxed (logically annotated) initial parameters
  stages(config) -> tuple of the stages a run goes through; stage_at(config, step) -> stage
  frozen(config, stage) -> 'a/b' prefixes of the parameters that stage does not train
  loss_fn(model, config, *, stage, num_groups) -> (params, batch, rng) -> (loss, metrics)
  metrics(stage) -> clu Collection of the training metrics
  torch_entries(model_cfg) -> the PyTorch parameter-name table (`mvp_jax.convert`)

Metrics of a loss function: `loss`, `loss_<part>` per loss term (the NaN guard names them) and
`<name>_correct` / `<name>_count` behind each accuracy.
"""

from types import ModuleType
from typing import Tuple

from mvp_jax.tasks import pretrain
from mvp_jax.tasks import re as re_task
from mvp_jax.tasks import retrieval
from mvp_jax.tasks import ve
from mvp_jax.tasks import vqa

_TASKS = {module.NAME: module for module in (pretrain, retrieval, vqa, ve, re_task)}
NAMES: Tuple[str, ...] = tuple(_TASKS)


def get(name: str) -> ModuleType:
  """The task module called `name`; a ValueError lists the known ones."""
  if name not in _TASKS:
    raise ValueError(f'Unknown task {name!r}: config.task must be one of {list(NAMES)}.')
  return _TASKS[name]
