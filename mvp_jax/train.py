"""The trainer of every task: `train_and_evaluate(config, workdir)`.

`config.task` (default 'pretrain') names a task module of `mvp_jax/tasks/`, which gives the model,
the loss, the metrics and the stages; everything else is the same for every task. Read top to
bottom: task -> mesh -> input pipeline (every split checked before step 0) -> model config, and
a resume refused before anything is written -> optimiser -> sharded init (unboxed state, its
shardings beside it) -> update step per stage -> restore or init_from -> evaluators -> loop.
The loop saves before it evaluates, so an evaluation that fails never costs a checkpoint.
"""

import json
import os
import time
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from clu import periodic_actions
from etils import epath

from mvp_jax import checkpointing
from mvp_jax import data
from mvp_jax import evaluators
from mvp_jax import host_memory
from mvp_jax import metrics as metrics_lib
from mvp_jax import optim
from mvp_jax import pixel_model
from mvp_jax import tasks
from mvp_jax import train_step as train_step_lib
from mvp_jax import trainer_lib
from mvp_jax import weights
from mvp_jax import xla_options
from mvp_jax.config import ModelConfig
from mvp_jax.evaluators import cache as eval_cache


METRICS_FILE = trainer_lib.METRICS_FILE
NonFiniteLossError = trainer_lib.NonFiniteLossError


def model_config(config: ml_collections.ConfigDict, directory: Optional[str],
                 info: Any = None) -> ModelConfig:
  """The run's ModelConfig: `config.model` with sizes of -1 taken from the `init_from` run (a
  run directory of ours), else from the dataset's vocabularies; then the task's own fields."""
  values = dict(config.model)
  source = _our_run(config.get('init_from'))
  if source:
    saved = json.loads((epath.Path(source) / checkpointing.MODEL_CONFIG_FILE).read_text())
    for key in ('vocab_size', 'word_vocab_size'):
      if values.get(key, 0) < 0:
        values[key] = saved[key]
  if values.get('word_vocab_size', 0) < 0 or values.get('vocab_size', 0) < 0:
    word_vocab, rows = data.vocab_sizes(directory)
    if values.get('word_vocab_size', 0) < 0:
      values['word_vocab_size'] = word_vocab
    if values.get('vocab_size', 0) < 0:
      values['vocab_size'] = rows
  if values.get('prediction_positions') == 'masked':  # slots sized for the data's mask rate
    values['mask_prob'] = config.data.get('mask_prob', values.get('mask_prob', 0.15))
  task = tasks.get(config.get('task', 'pretrain'))
  return task.model_config(ModelConfig.from_dict(values), info)


def _our_run(path: Optional[str]) -> Optional[str]:
  """`path` if it is an mvp-jax run directory (model_config.json beside checkpoints)."""
  if path and (epath.Path(path) / checkpointing.MODEL_CONFIG_FILE).exists():
    return path
  return None


def _init_from(config: ml_collections.ConfigDict) -> str:
  """`config.init_from`; None (the task configs' required placeholder) is refused clearly."""
  init_from = config.get('init_from', '')
  if init_from is None:
    raise ValueError(
        f'config.init_from is not set for task {config.get("task", "pretrain")!r}: pass '
        f'--config.init_from=PATH (an mvp-jax run directory, e.g. the --workdir of the '
        f"quickstart's pre-training, or an authors' .bin / .safetensors), or "
        f"--config.init_from='' to train from random weights.")
  return init_from


def _data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.data`; ShapesWorld task data without `pretraining_dir` takes the vocabulary of
  the `init_from` run's dataset (the `data.directory` in its config.json)."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  source = _our_run(config.get('init_from'))
  if ('pretraining_dir' in data_config and not data_config.pretraining_dir and source
      and data_config.kind == 'shapesworld'):
    source_data = json.loads((epath.Path(source) / checkpointing.CONFIG_FILE).read_text()).get(
        'data', {})
    data_config.pretraining_dir = (source_data.get('directory')
                                   or os.path.join(source, source_data.get('kind', '')))
  return data_config


def _negative_groups(config: ml_collections.ConfigDict, setup: trainer_lib.MeshSetup) -> int:
  negatives = config.get('negatives', 'global')
  if negatives not in ('local', 'global'):
    raise ValueError(f"config.negatives must be 'local' or 'global', got {negatives!r}.")
  num_groups = setup.num_data_shards if negatives == 'local' else 1
  accum = config.get('grad_accum_steps', 1)
  micro_batch = config.batch_size // accum
  if (config.batch_size % jax.process_count() or micro_batch * accum != config.batch_size
      or micro_batch % num_groups):
    raise ValueError(f'batch_size {config.batch_size} must divide over {jax.process_count()} '
                     f'hosts and split into {accum} micro-batches divisible by {num_groups} '
                     f'negative groups.')
  return num_groups


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains `config.task` (resuming from `workdir` if it holds checkpoints), evaluates with
  `config.evals`; returns the last training and evaluation metrics and `final_step`."""
  # --- Task, distributed init, mesh ------------------------------------------------------------
  task = tasks.get(config.get('task', 'pretrain'))
  if config.get('distributed', False):
    jax.distributed.initialize()
  setup = trainer_lib.create_mesh(config)
  num_groups = _negative_groups(config, setup)
  logging.info('Task %s; mesh %s, rules %s, %d negative group(s).', task.NAME,
               dict(setup.mesh.shape), config.sharding_rules, num_groups)
  init_from = _init_from(config)
  resuming = checkpointing.has_checkpoints(workdir)
  if resuming:  # config.json first: before the dataset is prepared, nothing is written
    checkpointing.check_resume(workdir, config)

  # --- Input pipeline: every split the run reads is checked before step 0 --------------------
  data_config = _data_config(config)
  directory = data.prepare_dataset(data_config, workdir, task=task.NAME)
  eval_config = dict(config.get('evals') or {})
  splits = [data_config.train_split] + [dict(e).get('split', 'val') for e in eval_config.values()]
  data.check_splits(data_config, directory, splits)
  info = None if task.NAME == 'pretrain' else data.task_info(directory)
  train_iter = data.create_iterator(
      data_config, directory, data_config.train_split, task=task.NAME,
      per_host_batch_size=config.batch_size // jax.process_count(), seed=config.seed,
      train=True, corrupt=True)
  total_steps = config.get('total_steps') or config.num_epochs * train_iter.batches_per_epoch
  logging.info('%d training steps (%d batches per epoch).', total_steps,
               train_iter.batches_per_epoch)

  # --- Model config; a resume with another config is refused before anything is written -----
  model_cfg = model_config(config, directory, info)
  if resuming:
    checkpointing.check_resume(workdir, model_config=model_cfg)
  scalar_writer = trainer_lib.ScalarWriter(workdir, config)
  checkpointing.save_run_configs(workdir, config, model_cfg)
  logging.info('Model config: %s', model_cfg)
  model = task.create_model(config, model_cfg)

  # --- Optimiser: its own Adam state for every group that some stage freezes ------------------
  stages = task.stages(config)
  groups = sorted({prefix for stage in stages for prefix in task.frozen(config, stage)})
  optimizer_for = lambda stage: optim.create_optimizer(
      config.optimizer, total_steps, config.batch_size, group_prefixes=groups,
      held_groups=task.frozen(config, stage),
      subtrees=pixel_model.optimizer_subtrees(model_cfg))  # the vision tower's own group
  schedule_fn = optim.learning_rate_schedule(config.optimizer, total_steps, config.batch_size)

  # --- Sharded init: boxed eval_shape -> shardings -> jit(init), unboxed once ----------------
  host_keys = task.HOST_KEYS
  device_part = lambda batch: {k: v for k, v in batch.items() if k not in host_keys}
  to_device = lambda batch: data.to_global(device_part(batch), setup.batch_sharding)
  first_batch = next(train_iter)
  init_batch = device_part({k: v[:2] for k, v in first_batch.items()})
  options = xla_options.compiler_options(config.get('xla_cpu_scheduler', 'auto'),
                                         xla_options.uses_remat(model_cfg))
  state, state_sharding = trainer_lib.sharded_init(
      lambda rng: task.init_params(model, rng, init_batch), optimizer_for(stages[0]),
      jax.random.PRNGKey(config.seed), setup, options)

  # --- Update step: one compiled function per stage (losses, frozen parameters, Adam groups) --
  def compile_stage(stage: int, state, batch):
    frozen = task.frozen(config, stage)
    step_fn = train_step_lib.make_update_step(
        task.loss_fn(model, config, stage=stage, num_groups=num_groups), optimizer_for(stage),
        schedule_fn, grad_accum_steps=config.get('grad_accum_steps', 1),
        frozen_mask=optim.trainable_mask(state.params, frozen) if frozen else None)

    def ruled(state, batch):
      with nn.logical_axis_rules(setup.rules):
        return step_fn(state, batch)

    compiled = jax.jit(ruled, in_shardings=(state_sharding, setup.batch_sharding),
                       out_shardings=(state_sharding, setup.replicated),
                       donate_argnums=(0,), compiler_options=options
                       ).lower(state, batch).compile()
    host_memory.release_free_heap()  # what the compiler freed, before the step's own buffers
    trainer_lib.wait_for_all_hosts(f'compiled stage {stage}')
    return compiled, trainer_lib.flops(compiled)  # FLOPs of one device's program

  # --- Checkpoints: resume (past an unreadable latest step), or initialise from init_from ----
  manager = checkpointing.CheckpointManager(
      os.path.join(workdir, checkpointing.CHECKPOINTS), save_every=config.checkpoint_every,
      keep=config.keep_checkpoints, async_save=config.get('async_checkpointing', True))
  with jax.set_mesh(setup.mesh):
    state, data_state, restored = checkpointing.restore_with_fallback(manager, state, workdir)
  if restored is not None:
    train_iter.set_state(data_state)
    first_batch = None
    logging.info('Resumed from step %d.', restored)
  elif init_from or (model_cfg.vision and model_cfg.vision.checkpoint):
    params, report = weights.init_from(
        state.params, model_config=model_cfg, mvptr=init_from or None, task=task.NAME,
        tower=model_cfg.vision.checkpoint if model_cfg.vision else None,
        skip=tuple(config.get('init_skip', ())),
        vqa_init_from_mlm=config.get('vqa_init_from_mlm', False), vocab_dir=directory)
    logging.info('init_from %s: %s', init_from, report.summary())
    state = state.replace(params=params)
  else:
    logging.info('No init_from: %s starts from random weights.', task.NAME)
  start_step = int(jax.device_get(state.step))

  # --- Evaluators (config.evals), on host batches read once per (split, corrupt), each image's
  # visual columns held once (evaluators/cache.py) -------------------------------------------
  cache: Dict[Any, list] = {}

  def eval_batches(split: str, corrupt: bool):
    if (split, corrupt) not in cache:
      cache[split, corrupt] = eval_cache.hold(data.create_iterator(
          data_config, directory, split, task=task.NAME,
          per_host_batch_size=config.eval_batch_size // jax.process_count(),
          seed=config.seed + 1, train=False, corrupt=corrupt), where=f'{directory}/{split}')
    return cache[split, corrupt]

  context = evaluators.EvalContext(model=model, task=task.NAME, batches=eval_batches,
                                   to_device=to_device, workdir=workdir,
                                   answers=getattr(info, 'answers', None))
  all_evaluators = evaluators.from_config(eval_config, context)

  def run_evals(params, done: int, is_last: bool) -> Dict[str, float]:
    results = {}
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      for evaluator in all_evaluators:
        if is_last or (evaluator.every and done % evaluator.every == 0):
          results.update(evaluator.run(params))
    return results

  # --- Loop ------------------------------------------------------------------------------------
  preemption = checkpointing.PreemptionFlag().install()
  report = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=scalar_writer.writer)
  hooks = [report]
  if jax.process_index() == 0 and config.get('profile', False):
    hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                           config.get('peak_flops', 0.0))
  guard = trainer_lib.NonFiniteGuard(data_config.train_split)
  step_fns: Dict[int, Any] = {}
  train_metrics, final = None, {}
  last_log_time, last_log_step = time.time(), start_step
  try:
    for step in range(start_step, total_steps):
      stage = task.stage_at(config, step)
      batch = first_batch if first_batch is not None else next(train_iter)
      first_batch = None
      with jax.set_mesh(setup.mesh), jax.profiler.StepTraceAnnotation('train', step_num=step):
        global_batch = to_device(batch)
        if stage not in step_fns:
          step_fns[stage] = compile_stage(stage, state, global_batch)
          train_metrics = None
        step_fn, flops_per_step = step_fns[stage]
        state, step_metrics = step_fn(state, global_batch)
      update = task.metrics(stage).single_from_model_output(**step_metrics)
      train_metrics = update if train_metrics is None else train_metrics.merge(update)
      done = step + 1
      guard.add(done, step_metrics, batch.get('example_index'))
      for hook in hooks:
        hook(done)

      is_last = done == total_steps
      if done % config.log_every == 0 or is_last or done % config.checkpoint_every == 0:
        guard.check()
      if done % config.log_every == 0 or is_last:
        elapsed = max(time.time() - last_log_time, 1e-9)
        scalars = {f'train/{k}': float(v) for k, v in train_metrics.compute().items()}
        scalars['train/stage'] = stage
        scalars['train/examples_per_s'] = (done - last_log_step) * config.batch_size / elapsed
        scalars.update({f'train/{k}': v for k, v in metrics_lib.throughput(
            flops_per_step, done - last_log_step, elapsed, setup.mesh.devices.size, peak).items()})
        scalar_writer.write(done, scalars)
        final.update(scalars)
        train_metrics, last_log_time, last_log_step = None, time.time(), done
      if trainer_lib.save_or_stop(manager, preemption, state, train_iter, done, is_last, guard):
        final['preempted_at_step'] = done
        break
      with report.timed('eval'):
        eval_results = run_evals(state.params, done, is_last)
      if eval_results:
        scalar_writer.write(done, eval_results)
        final.update(eval_results)
    if start_step >= total_steps:  # a finished run: evaluate its final checkpoint again
      final.update(run_evals(state.params, start_step, True))
  finally:
    manager.close()
    preemption.uninstall()
    scalar_writer.flush()
  final['final_step'] = int(jax.device_get(state.step))
  return final
