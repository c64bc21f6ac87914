"""Fine-tuning and evaluation on a downstream task: `finetune_and_evaluate(config, workdir)`.

One trainer for the four tasks of spec §4 (`config.task` in retrieval, vqa, ve, re). Read top to
bottom: logging -> mesh -> input pipeline -> model and optimiser -> sharded init -> update step ->
checkpoint / init_from -> evaluators -> loop. The mesh, sharded init, update step with NaN guard
and metric writing are `trainer_lib`'s, shared with pre-training (`train.py`).

`config.init_from` is either a pre-training (or fine-tuning) run directory of ours, read with
`checkpointing.load_trained`, or an authors' PyTorch checkpoint (`pytorch_model.bin`,
`.safetensors`, a folder holding one). The backbone is copied; a head is copied only when the
source has this task's head with the same shapes; `vqa_init_from_mlm` starts the VQA answer
head's transform from the pre-trained MLM head, as the authors did. What starts fresh is logged.
"""

import functools
import os
import time
from typing import Any, Callable, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from clu import periodic_actions
from flax import traverse_util

from input_pipeline.tasks import iterators as task_iterators
from mvp_jax import checkpointing
from mvp_jax import convert
from mvp_jax import data
from mvp_jax import metrics as metrics_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax import trainer_lib
from mvp_jax.config import ModelConfig
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream import models
from mvp_jax.evaluators import retrieval as retrieval_eval
from mvp_jax.evaluators import tasks as task_eval

Array = jax.Array
# Batch columns that never go to the device: bookkeeping ids (int64).
HOST_ONLY_KEYS = ('example_index', 'question_id')
# Training metrics of each task: averaged losses and count-ratio accuracies.
TASK_METRICS = {'retrieval': (('loss_itc', 'loss_itm'), ('itc', 'itm')),
                'vqa': (('loss_vqa',), ('vqa',)), 've': (('loss_ve',), ('ve',)),
                're': (('loss_re',), ('re',))}


def task_loss(model: nn.Module, task: str, params: Any, batch: Mapping[str, Array], rng: Array,
              *, num_groups: int = 1, deterministic: bool = False
              ) -> Tuple[Array, Dict[str, Array]]:
  """The task's fine-tuning loss (spec §4) and its metrics (`loss`, `loss_<part>`, counts)."""
  dropout_rng, negatives_rng = jax.random.split(rng)
  rngs = {'dropout': dropout_rng}
  if task == 'retrieval':
    out = model.apply({'params': params}, batch, deterministic=deterministic,
                      hard_negatives=negatives_rng, negative_groups=num_groups, rngs=rngs)
    loss, metrics = task_losses.retrieval_loss(out['sim_mat'], out['logit_scale'],
                                               out['match_logits'], num_groups)
  else:
    out = model.apply({'params': params}, batch, deterministic=deterministic, rngs=rngs)
    if task == 'vqa':
      loss, metrics = task_losses.vqa_loss(out['answer_logits'], batch['answer_targets'])
    elif task == 've':
      loss, metrics = task_losses.classification_loss(out['class_logits'], batch['label'])
    elif task == 're':
      loss, metrics = task_losses.referring_loss(out['region_logits'], batch['region_iou'])
    else:
      raise ValueError(f'Unknown task {task!r}; choose from {models.TASKS}.')
    metrics = dict(metrics, **{f'loss_{task}': loss})
  return loss, dict(metrics, loss=loss)


def train_metrics_collection(task: str):
  """clu Collection of the task's training metrics."""
  averaged, ratios = TASK_METRICS[task]
  fields = {name: clu_metrics.Average.from_output(name) for name in ('loss',) + averaged}
  fields.update({f'{name}_accuracy': metrics_lib.Ratio.from_counts(name) for name in ratios})
  fields.update(grad_norm=clu_metrics.Average.from_output('grad_norm'),
                learning_rate=clu_metrics.LastValue.from_output('learning_rate'))
  return clu_metrics.Collection.create(**fields)


def prepare_task_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The task dataset directory; ShapesWorld task data is generated there on first use.

  ShapesWorld task data takes its vocabulary and generation settings from the pre-training
  dataset `data.pretraining_dir` (so the pre-trained embeddings fit), images per split from
  `data.shapesworld` (num_train, num_val, num_test).
  """
  data_config = config.data
  directory = data_config.get('directory') or os.path.join(workdir, f'shapesworld_{config.task}')
  if data_config.kind == 'shapesworld':
    from input_pipeline.tasks import shapesworld_tasks  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      shapesworld_tasks.build_task_dataset(config.task, directory,
                                           data_config.get('pretraining_dir') or None,
                                           **dict(data_config.shapesworld))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('shapesworld_task_ready')
  elif data_config.kind == 'records':
    if not os.path.isdir(directory):
      raise FileNotFoundError(f'data.directory {directory!r} does not exist; import the task '
                              f'data with `input_pipeline.tasks` first.')
  else:
    raise ValueError(f"Unknown data.kind {data_config.kind!r}: 'shapesworld' or 'records'.")
  return directory


def create_task_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
                      info) -> nn.Module:
  return models.create_model(config.task, model_cfg, num_answers=info.num_answers or None,
                             phrase_layer=config.get('phrase_layer', 2),
                             num_labels=config.get('num_labels') or None)


# --- init_from ----------------------------------------------------------------------------------
def source_params(path: str, task: str, model_cfg: ModelConfig) -> Dict[Tuple[str, ...], Any]:
  """Flat {our path: array} of a run directory of ours or of an authors' torch checkpoint."""
  if os.path.exists(os.path.join(path, checkpointing.MODEL_CONFIG_FILE)):
    _, params, step = checkpointing.load_trained(path)
    logging.info('init_from: %s (our checkpoint, step %d).', path, step)
    return traverse_util.flatten_dict(params)
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
  logging.info('init_from: %s (torch, %s checkpoint, %d of %d tensors used).', path,
               task if is_task_checkpoint else 'pre-training', len(usable), len(state))
  return traverse_util.flatten_dict(converted)


def load_pretrained(params: Any, path: str, task: str, model_cfg: ModelConfig, *,
                    vqa_init_from_mlm: bool = False) -> Any:
  """`params` (boxed, sharded) with the backbone (and matching heads) of `path` put in.

  Every backbone parameter except `logit_scale` (absent from the authors' VQA/VE/RE state dicts)
  must come from `path` with the same shape; a head of another shape stays fresh (logged).
  """
  source = source_params(path, task, model_cfg)
  flat = traverse_util.flatten_dict(params)
  if vqa_init_from_mlm and task == 'vqa':
    for key, value in list(source.items()):
      if key[0] == 'mlm_head' and key[1] in ('transform', 'transform_layernorm'):
        source.setdefault(('answer_head',) + key[1:], value)
  loaded, mismatched = [], []
  for key, target in flat.items():
    if key not in source:
      continue
    current = nn.unbox(target)
    value = np.asarray(source[key], current.dtype)
    if value.shape != current.shape:
      mismatched.append(f'{"/".join(key)}: source {value.shape}, model {current.shape}')
      continue
    new = jax.device_put(value, current.sharding)
    flat[key] = target.replace_boxed(new) if isinstance(target, nn.Partitioned) else new
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
  logging.info('init_from %s: loaded %d parameters; fresh: %s', path, len(loaded), fresh)
  return traverse_util.unflatten_dict(flat)


# --- the trainer --------------------------------------------------------------------------------
def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Fine-tunes `config.task` (resuming from `workdir` if it holds checkpoints); returns the
  final training and evaluation metrics."""
  task = config.task
  if task not in models.TASKS:
    raise ValueError(f'config.task must be one of {models.TASKS}, got {task!r}.')
  # --- Logging -------------------------------------------------------------------------------
  if config.get('distributed', False):
    jax.distributed.initialize()
  scalar_writer = trainer_lib.ScalarWriter(workdir, config)

  # --- Mesh ----------------------------------------------------------------------------------
  mesh_setup = trainer_lib.create_mesh(config)
  mesh, rules = mesh_setup.mesh, mesh_setup.rules
  num_groups = mesh_setup.num_data_shards if config.get('negatives') == 'local' else 1
  if config.batch_size % (jax.process_count() * num_groups):
    raise ValueError(f'batch_size {config.batch_size} must divide over {jax.process_count()} '
                     f'hosts and {num_groups} negative groups.')

  # --- Input pipeline ------------------------------------------------------------------------
  directory = prepare_task_dataset(config, workdir)
  info = task_iterators.load_task_info(directory)
  lengths = data.lengths(config.data)
  make_iterator = functools.partial(task_iterators.create_task_iterator, directory, task,
                                    lengths=lengths,
                                    tags_as_list=config.data.get('tags_as_list', False))
  train_iter = make_iterator(config.data.train_split,
                             batch_size=config.batch_size // jax.process_count(),
                             seed=config.seed, shuffle=True, repeat=True, pad_final_batch=False)
  total_steps = config.total_steps or config.num_epochs * train_iter.batches_per_epoch
  logging.info('%s: %d training steps (%d per epoch).', task, total_steps,
               train_iter.batches_per_epoch)

  # --- Model and optimiser -------------------------------------------------------------------
  model_cfg = ModelConfig.from_dict(_resolved_model(config, directory))
  model = create_task_model(config, model_cfg, info)
  optimizer = optim.create_optimizer(config.optimizer, total_steps, config.batch_size)
  schedule_fn = optim.learning_rate_schedule(config.optimizer, total_steps, config.batch_size)
  checkpointing.save_run_configs(workdir, config, model_cfg)

  # --- Sharded init ----------------------------------------------------------------------------
  first_batch = next(train_iter)
  init_batch = _device_columns({k: v[:2] for k, v in first_batch.items()})

  def init_fn(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, init_batch)['params']
    return trainer_lib.create_train_state(params, optimizer, state_rng)

  state, state_sharding, _ = trainer_lib.sharded_init(init_fn, jax.random.PRNGKey(config.seed),
                                                      mesh_setup)

  # --- Update step ---------------------------------------------------------------------------
  loss_fn = functools.partial(task_loss, model, task, num_groups=num_groups)
  step_fn = train_step_lib.make_update_step(loss_fn, optimizer, schedule_fn)

  def ruled_step(state, batch):
    with nn.logical_axis_rules(rules):
      return step_fn(state, batch)

  train_step = jax.jit(ruled_step, in_shardings=(state_sharding, mesh_setup.batch_sharding),
                       out_shardings=(state_sharding, mesh_setup.replicated),
                       donate_argnums=(0,))

  # --- Checkpoints: resume, or initialise from a pre-trained checkpoint ----------------------
  manager, state, resumed = trainer_lib.restore_latest(config, workdir, state, train_iter, mesh)
  if resumed:
    first_batch = None
  elif config.get('init_from'):
    state = state.replace(params=load_pretrained(
        state.params, config.init_from, task, model_cfg,
        vqa_init_from_mlm=config.get('vqa_init_from_mlm', False)))
  else:
    logging.info('No init_from: training %s from scratch.', task)
  start_step = int(jax.device_get(state.step))

  # --- Evaluators ----------------------------------------------------------------------------
  to_device = lambda b: data.to_global(_device_columns(b), mesh_setup.batch_sharding)
  evaluators = {split: _create_evaluator(config, model, info, to_device, workdir, split,
                                         _cached(make_iterator, split, config))
                for split in config.data.eval_splits}

  def run_evals(params) -> Dict[str, float]:
    results = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for evaluator in evaluators.values():
        results.update(evaluator.run(params))
    return results

  # --- Loop ----------------------------------------------------------------------------------
  preemption = checkpointing.PreemptionFlag().install()
  report = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=scalar_writer.writer)
  collection = train_metrics_collection(task)
  train_metrics, nonfinite, final = None, None, {}
  last_log_time, last_log_step = time.time(), start_step
  try:
    for step in range(start_step, total_steps):
      batch = first_batch if first_batch is not None else next(train_iter)
      first_batch = None
      with jax.set_mesh(mesh):
        state, step_metrics = train_step(state, to_device(batch))
      update = collection.single_from_model_output(**step_metrics)
      train_metrics = update if train_metrics is None else train_metrics.merge(update)
      nonfinite = trainer_lib.merge_flags(nonfinite, step_metrics)
      done = step + 1
      report(done)
      is_last = done == total_steps
      if done % config.log_every == 0 or is_last or done % config.checkpoint_every == 0:
        trainer_lib.raise_if_nonfinite(nonfinite, done)
        nonfinite = None
      if done % config.log_every == 0 or is_last:
        elapsed = max(time.time() - last_log_time, 1e-9)
        scalars = {f'train/{k}': float(v) for k, v in train_metrics.compute().items()}
        scalars['train/examples_per_s'] = (done - last_log_step) * config.batch_size / elapsed
        scalar_writer.write(done, scalars)
        final.update(scalars)
        train_metrics, last_log_time, last_log_step = None, time.time(), done
      if (config.eval_every and done % config.eval_every == 0) or is_last:
        with report.timed('eval'):
          results = run_evals(state.params)
        scalar_writer.write(done, results)
        final.update(results)
      if trainer_lib.save_or_stop(manager, preemption, state, train_iter, done, is_last,
                                  nonfinite):
        final['preempted_at_step'] = done
        break
    if start_step >= total_steps:  # a finished run: evaluate its final checkpoint again
      final.update(run_evals(state.params))
  finally:
    manager.close()
    preemption.uninstall()
    scalar_writer.flush()
  final['final_step'] = int(jax.device_get(state.step))
  return final


def _resolved_model(config: ml_collections.ConfigDict, directory: str) -> Dict[str, Any]:
  """config.model with vocab sizes of -1 read off the dataset, and the init_from run's sizes
  (a run directory of ours) filled in where the config leaves them at -1."""
  values = dict(config.model)
  init_from = config.get('init_from')
  if init_from and os.path.exists(os.path.join(init_from, checkpointing.MODEL_CONFIG_FILE)):
    import json  # pylint: disable=g-import-not-at-top
    with open(os.path.join(init_from, checkpointing.MODEL_CONFIG_FILE), encoding='utf-8') as f:
      source = json.load(f)
    for key in ('vocab_size', 'word_vocab_size'):
      if values.get(key, 0) < 0:
        values[key] = source[key]
  if values.get('word_vocab_size', 0) < 0 or values.get('vocab_size', 0) < 0:
    word_vocab, rows = data.vocab_sizes(directory)
    values['word_vocab_size'] = (word_vocab if values.get('word_vocab_size', 0) < 0
                                 else values['word_vocab_size'])
    values['vocab_size'] = rows if values.get('vocab_size', 0) < 0 else values['vocab_size']
  return values


def _device_columns(batch: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  return {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}


def _cached(make_iterator: Callable, split: str, config: ml_collections.ConfigDict):
  """A callable returning the split's evaluation batches, read once on first use."""
  cache = []

  def batches():
    if not cache:
      cache.extend(data.cached_batches(make_iterator(
          split, batch_size=config.eval_batch_size // jax.process_count(), seed=config.seed,
          shuffle=False, repeat=False, pad_final_batch=True)))
    return cache

  return batches


def _create_evaluator(config, model, info, to_device, workdir: str, split: str, batches):
  task, prefix = config.task, f'{split}/{config.task}'
  if task == 'retrieval':
    return retrieval_eval.TwoStageRetrievalEvaluator(
        model, batches, to_device, match_probability=retrieval_eval.finetuned_match_probability,
        top_k_images=config.eval.top_k_images, top_k_texts=config.eval.top_k_texts,
        add_contrastive=config.eval.add_contrastive,
        score_batch_size=config.eval.score_batch_size, prefix=prefix)
  if task == 'vqa':
    return task_eval.VQAEvaluator(
        model, batches, to_device, answers=info.answers, prefix=prefix,
        predictions_path=os.path.join(workdir, f'vqa_predictions_{split}.json'))
  if task == 've':
    return task_eval.VEEvaluator(model, batches, to_device, prefix=prefix)
  return task_eval.REEvaluator(model, batches, to_device, prefix=prefix)
