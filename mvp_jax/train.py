"""MVPTR pre-training: `train_and_evaluate(config, workdir)`.

Read top to bottom: logging -> mesh -> input pipeline -> model and optimiser -> sharded init ->
update step -> checkpoint / init_from -> evaluators -> loop. Everything is configured by an
`ml_collections.ConfigDict` (see `configs/`).
"""

import functools
import time
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import periodic_actions

from mvp_jax import checkpointing
from mvp_jax import data
from mvp_jax import metrics as metrics_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax import trainer_lib
from mvp_jax import weights
from mvp_jax.config import ModelConfig
from mvp_jax.evaluators import pretraining as evaluators

# Peak dense bfloat16 FLOP/s per device, for MFU. Unknown devices (CPUs) use config.peak_flops.
PEAK_FLOPS = {'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12,
              'TPU v6 lite': 918e12, 'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H200': 989e12,
              'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA A100-SXM4-40GB': 312e12}


METRICS_FILE = trainer_lib.METRICS_FILE
NonFiniteLossError = trainer_lib.NonFiniteLossError


def model_config(config: ml_collections.ConfigDict, directory: Optional[str]) -> ModelConfig:
  """The model config; `word_vocab_size` / `vocab_size` of -1 are read off the dataset vocab."""
  values = dict(config.model)
  if values.get('word_vocab_size', 0) < 0 or values.get('vocab_size', 0) < 0:
    word_vocab, rows = data.vocab_sizes(directory)
    if values.get('word_vocab_size', 0) < 0:
      values['word_vocab_size'] = word_vocab
    if values.get('vocab_size', 0) < 0:
      values['vocab_size'] = rows
  return ModelConfig.from_dict(values)


def peak_flops(config: ml_collections.ConfigDict) -> Optional[float]:
  if config.get('peak_flops'):
    return float(config.peak_flops)
  return PEAK_FLOPS.get(jax.devices()[0].device_kind)


def create_train_state(model_cfg: ModelConfig, optimizer, rng, init_batch):
  """Boxed (logically annotated) TrainState: params, optimiser state, step 0, rng."""
  params_rng, state_rng = jax.random.split(rng)
  params = model_lib.init_params(model_cfg, params_rng, init_batch)
  return train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                   opt_state=optimizer.init(params), rng=state_rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Runs pre-training (resuming from `workdir` if it holds checkpoints); returns final metrics."""
  # --- Logging -------------------------------------------------------------------------------
  if config.get('distributed', False):
    jax.distributed.initialize()
  scalar_writer = trainer_lib.ScalarWriter(workdir, config)

  # --- Mesh ----------------------------------------------------------------------------------
  mesh_setup = trainer_lib.create_mesh(config)
  mesh, rules = mesh_setup.mesh, mesh_setup.rules
  batch_sharding, replicated = mesh_setup.batch_sharding, mesh_setup.replicated
  num_groups = mesh_setup.num_data_shards if config.negatives == 'local' else 1
  if config.negatives not in ('local', 'global'):
    raise ValueError(f"config.negatives must be 'local' or 'global', got {config.negatives!r}.")
  logging.info('Mesh %s, rules %s, %d negative group(s).', dict(mesh.shape),
               config.sharding_rules, num_groups)

  # --- Input pipeline ------------------------------------------------------------------------
  if config.batch_size % jax.process_count():
    raise ValueError(f'batch_size {config.batch_size} not divisible by '
                     f'{jax.process_count()} hosts.')
  micro_batch = config.batch_size // config.grad_accum_steps
  if micro_batch * config.grad_accum_steps != config.batch_size or micro_batch % num_groups:
    raise ValueError(f'batch_size {config.batch_size} must split into {config.grad_accum_steps}'
                     f' micro-batches divisible by {num_groups} negative groups.')
  per_host_batch = config.batch_size // jax.process_count()
  directory = data.prepare_dataset(config.data, workdir)
  train_iter = data.create_iterator(config.data, directory, config.data.train_split,
                                    per_host_batch_size=per_host_batch, seed=config.seed,
                                    train=True)

  # --- Model and optimiser -------------------------------------------------------------------
  model_cfg = model_config(config, directory)
  model = model_lib.MVPPretrainingModel(model_cfg)
  optimizer = optim.create_optimizer(config.optimizer, config.total_steps, config.batch_size)
  schedule_fn = optim.learning_rate_schedule(config.optimizer, config.total_steps,
                                             config.batch_size)
  logging.info('Model config: %s', model_cfg)
  checkpointing.save_run_configs(workdir, config, model_cfg)

  # --- Sharded init: eval_shape -> logical specs -> shardings -> jit(init, out_shardings) ----
  first_batch = next(train_iter)
  init_batch = {k: v[:2] for k, v in first_batch.items()}
  init_fn = functools.partial(create_train_state, model_cfg, optimizer,
                              init_batch=data.model_inputs(init_batch))
  state, state_sharding, _ = trainer_lib.sharded_init(init_fn, jax.random.PRNGKey(config.seed),
                                                       mesh_setup)

  # --- Update step (one compiled function per stage) -----------------------------------------
  weights = dict(config.loss_weights)
  frozen = optim.trainable_mask(state.params, train_step_lib.STAGE1_FROZEN)

  def compiled_step(stage: int):
    fn = train_step_lib.make_train_step(
        model, optimizer, schedule_fn, stage=stage, num_groups=num_groups, weights=weights,
        grad_accum_steps=config.grad_accum_steps, frozen_mask=frozen if stage == 1 else None)

    def ruled(state, batch):
      with nn.logical_axis_rules(rules):
        return fn(state, batch)

    return jax.jit(ruled, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  def compile_step(stage: int, state, batch):
    """Compiles the stage's step once; its cost analysis gives the FLOPs for MFU."""
    compiled = compiled_step(stage).lower(state, batch).compile()
    return compiled, trainer_lib.flops(compiled)

  step_fns: Dict[int, Any] = {}

  # --- Checkpoints: resume, or initialise from a converted checkpoint ------------------------
  manager, state, resumed = trainer_lib.restore_latest(config, workdir, state, train_iter, mesh)
  if resumed:
    first_batch = None
  elif config.get('init_from'):
    loaded, report = weights.load(config.init_from, state.params, model_config=model_cfg,
                                  skip=tuple(config.get('init_skip', ())))
    logging.info('init_from: %s', report.summary())
    # The state is still boxed here (the trainer unboxes it in the redesign).
    state = state.replace(params=jax.tree_util.tree_map(
        lambda box, new: box.replace_boxed(new) if isinstance(box, nn.Partitioned) else new,
        state.params, loaded, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
  start_step = int(jax.device_get(state.step))

  # --- Evaluators ----------------------------------------------------------------------------
  eval_batches = []

  def val_batches():
    if not eval_batches:  # read once, on first use
      eval_batches.extend(data.cached_batches(data.create_iterator(
          config.data, directory, config.data.val_split,
          per_host_batch_size=config.eval_batch_size // jax.process_count(),
          seed=config.seed + 1, train=False)))
    return eval_batches

  to_device = lambda b: data.to_global(data.model_inputs(b), batch_sharding)
  all_evaluators = (
      evaluators.RetrievalEvaluator(
          model, val_batches, to_device, top_k=config.eval.top_k,
          add_contrastive=config.eval.get('add_contrastive', False)),
      evaluators.TokenAccuracyEvaluator(model, val_batches, to_device),
      evaluators.GroundingEvaluator(model, val_batches, to_device))

  def run_evals(params) -> Dict[str, float]:
    results = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for evaluator in all_evaluators:
        results.update(evaluator.run(params))
    return results

  # --- Loop ----------------------------------------------------------------------------------
  write_scalars = scalar_writer.write
  preemption = checkpointing.PreemptionFlag().install()
  report = periodic_actions.ReportProgress(num_train_steps=config.total_steps,
                                           writer=scalar_writer.writer)
  hooks = [report]
  if jax.process_index() == 0 and config.get('profile', False):
    hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
  peak = peak_flops(config)
  train_metrics, nonfinite = None, None
  last_log_time, last_log_step = time.time(), start_step
  final: Dict[str, float] = {}
  step = start_step
  try:
    for step in range(start_step, config.total_steps):
      stage = train_step_lib.stage_at(step, config.schedule, config.stage1_steps)
      batch = first_batch if first_batch is not None else next(train_iter)
      first_batch = None
      with jax.set_mesh(mesh), jax.profiler.StepTraceAnnotation('train', step_num=step):
        global_batch = data.to_global(data.model_inputs(batch), batch_sharding)
        if stage not in step_fns:
          step_fns[stage] = compile_step(stage, state, global_batch)
          train_metrics = None
        step_fn, flops_per_step = step_fns[stage]
        state, step_metrics = step_fn(state, global_batch)
      collection = metrics_lib.collection_for_stage(stage)
      update = collection.single_from_model_output(**step_metrics)
      train_metrics = update if train_metrics is None else train_metrics.merge(update)
      nonfinite = trainer_lib.merge_flags(nonfinite, step_metrics)
      done = step + 1
      for hook in hooks:
        hook(done)

      is_last = done == config.total_steps
      if done % config.log_every == 0 or is_last or done % config.checkpoint_every == 0:
        trainer_lib.raise_if_nonfinite(nonfinite, done)
        nonfinite = None
      if done % config.log_every == 0 or is_last:
        elapsed = time.time() - last_log_time
        scalars = {f'train/{k}': float(v) for k, v in train_metrics.compute().items()}
        scalars['train/stage'] = stage
        examples_per_s = (done - last_log_step) * config.batch_size / max(elapsed, 1e-9)
        scalars['train/examples_per_s'] = examples_per_s
        if flops_per_step:
          achieved = flops_per_step * (done - last_log_step) / max(elapsed, 1e-9)
          scalars['train/tflops_per_s'] = achieved / 1e12
          if peak:
            scalars['train/mfu'] = achieved / (peak * jax.device_count())
        write_scalars(done, scalars)
        final.update(scalars)
        train_metrics, last_log_time, last_log_step = None, time.time(), done
      if config.eval_every and (done % config.eval_every == 0 or is_last):
        with report.timed('eval'):
          eval_results = run_evals(state.params)
        write_scalars(done, eval_results)
        final.update(eval_results)
      if trainer_lib.save_or_stop(manager, preemption, state, train_iter, done, is_last,
                                  nonfinite):
        final['preempted_at_step'] = done
        break
  finally:
    manager.close()
    preemption.uninstall()
    scalar_writer.flush()
  final['final_step'] = int(jax.device_get(state.step))
  return final

