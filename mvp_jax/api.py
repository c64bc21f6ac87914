"""User-facing helpers: load a checkpoint into its model, and run the model on arrays."""

import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
from absl import logging

from mvp_jax import convert
from mvp_jax import model as model_lib
from mvp_jax import weights
from mvp_jax.config import ModelConfig
from mvp_jax.downstream import models as task_models
from mvp_jax.model import MVPPretrainingModel

Params = Dict[str, Any]


def load_checkpoint(source, config: Optional[ModelConfig] = None, *, task: Optional[str] = None,
                    **overrides) -> Tuple[ModelConfig, Params]:
  """(config, params) of any checkpoint `mvp_jax.weights` reads, for the model it belongs to.

  Args:
    source: our run directory, an exported folder, the authors' `pytorch_model.bin` /
      `.safetensors` (pre-training, retrieval, VQA, SNLI-VE or RE layout) or golden-style `.npz`,
      a folder holding one, or an in-memory {torch name: array} state dict.
    config: the model config; by default the one the source records, else inferred from the
      tensor shapes (heads from a config.json beside the file, else hidden/64).
    task: the model to load into; default the source's own ('pretrain' for a backbone-only
      checkpoint, which gives params with only the `backbone` entry). task='pretrain' with a task
      checkpoint gives its backbone.
    **overrides: ModelConfig fields to override (e.g. num_heads=4).

  Returns:
    (config, params): params of `MVPPretrainingModel` or of the task model
    (`mvp_jax.downstream.models`), unboxed jax float32 arrays; `model.apply` runs on them. The
    authors' VQA / SNLI-VE / RE dicts lack `logit_scale`: it is set to `logit_scale_init`.
  """
  config, params, report = load_checkpoint_with_report(source, config, task=task, **overrides)
  logging.info('%s', report.summary())
  return config, params


def load_checkpoint_with_report(source, config: Optional[ModelConfig] = None, *,
                                task: Optional[str] = None, **overrides):
  """`load_checkpoint` plus its `weights.LoadReport`: (config, params, report)."""
  src = weights.read(source)
  config = _config_of(src, config, overrides)
  own = 'pretrain' if src.task in ('backbone', 'bert') else src.task
  task = task or own
  if task != own and task != 'pretrain':
    raise weights.WeightsError(
        f'{src.name} is a {src.task} checkpoint, not a {task} one: its {task} head is unknown. '
        f'Initialise the {task} model and call mvp_jax.weights.load(source, params, ...) to start '
        'that head fresh.')
  if src.kind == 'hf_bert':
    target = nn.unbox(model_lib.init_params(config, jax.random.PRNGKey(0)))
  else:
    target = _abstract_params(src, config, task)
  params, report = weights.load(src, target, model_config=config, task=task)
  return config, params, report


def _config_of(src, config: Optional[ModelConfig], overrides) -> ModelConfig:
  if config is None and src.config is not None:
    config = src.config
  if config is not None:
    return config.replace(**overrides) if overrides else config
  if src.state is None:
    raise weights.WeightsError(f'{src.name} records no model config: pass config=.')
  values = {}
  if 'num_attention_heads' in src.info:
    values['num_heads'] = int(src.info['num_attention_heads'])
  if src.task != 'pretrain':  # no MLM decoder to read the word count off
    rows = src.state['bert.embeddings.word_embeddings.weight'].shape[0]
    values['word_vocab_size'] = min(30522, rows)
  values.update(overrides)
  return convert.infer_config(src.state, **values)


def _head_rows(src, torch_name: str, our_path: Tuple[str, ...], axis: int) -> int:
  if src.state is not None:
    return src.state[torch_name].shape[0]
  return src.tree[our_path].shape[axis]


def _abstract_params(src, config: ModelConfig, task: str) -> Params:
  """ShapeDtypeStructs of the model the source is loaded into (sizes of its heads)."""
  batch = model_lib.dummy_batch(config)
  if task == 'pretrain':
    model = MVPPretrainingModel(config)
  elif task == 'retrieval':
    model = task_models.RetrievalModel(config)
  elif task == 'vqa':
    model = task_models.VQAModel(config, _head_rows(
        src, 'cls.predictions.decoder.weight', ('answer_head', 'decoder'), 0))
  else:
    rows = _head_rows(src, 'classifier.weight', ('classifier', 'kernel'), 1)
    model = (task_models.VEModel(config, rows) if task == 've' else task_models.REModel(
        config, min(2, config.num_cross_layers - 1), rows))
  shapes = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch)['params']))
  if task == 'pretrain' and src.task != 'pretrain':
    shapes = {'backbone': shapes['backbone']}
  return shapes


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
