r"""The base pre-training step (all five losses, hard negatives, AdamW): compile time, s/step,
examples/s, per-device FLOPs, XLA memory analysis, for a grid of batch / remat / head options.

  python -m benchmarks.base_step --batch_sizes=8 --heads=all,masked --remat=off --steps=3
  python -m benchmarks.base_step --batch_sizes=32 --remat=off,full,dots --steps=0   # memory only
  python -m benchmarks.base_step --heads=masked --dropout_rng=threefry,rbg --repeats=2
  python -m benchmarks.base_step --batch_sizes=32 --remat=off --cpu_scheduler=default,auto
  python -m benchmarks.base_step --dtype=bfloat16 --batch_sizes=512,256,128,64 --largest_only \
      --heads=masked --peak_flops=989e12                                         # a GPU

Runs every combination `--repeats` times, interleaved (combination order repeated), so that a
noisy shared machine affects all of them alike; prints one line per run and a min-max summary.
Synthetic batches have the base lengths (35 words + 5 phrases, 20 tags, 50 regions) and 15%
labels. The loss is the trainer's (`tasks.pretrain.loss_fn`, all five losses, one negative
group on one device); `--dropout_rng` picks the dropout PRNG (`ModelConfig.dropout_rng`),
`--cpu_scheduler` the trainer's `config.xla_cpu_scheduler` (`xla_options.compiler_options`, for
the init and the step programs, as the trainer compiles them; like the trainer, the benchmark
gives the compiler's freed heap back with `host_memory.release_free_heap` before the first
step). FLOPs are XLA's cost analysis of the compiled step, which is per device; MFU = FLOPs / s
/ peak per device. `peak_rss_gib` is the process's peak RSS so far (one grid
point per process for a clean figure, as `benchmarks.head_to_head` runs it);
`rss_after_init_gib` / `rss_after_compile_gib` its resident set once the state is initialised
and once the step is compiled, so the peak splits into state, compilation and the step's own
buffers. `temp` is XLA's temporary buffer size (activations kept for
the backward pass and scratch), `peak` = arguments + outputs + temp - aliased.
"""

import itertools
import resource
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks import base_batch
from mvp_jax import config as config_lib
from mvp_jax import host_memory
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import sharding
from mvp_jax import train_step as train_step_lib
from mvp_jax import xla_options
from mvp_jax.tasks import pretrain

_BATCHES = flags.DEFINE_list('batch_sizes', ['8'], 'Global batch sizes.')
_HEADS = flags.DEFINE_list('heads', ['all', 'masked'], 'prediction_positions values.')
_REMAT = flags.DEFINE_list('remat', ['off'], "'off' or remat policies ('full', 'dots', ...).")
_DROPOUT_RNG = flags.DEFINE_list('dropout_rng', ['threefry'],
                                 'ModelConfig.dropout_rng values (threefry, rbg, unsafe_rbg).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps after one warm-up (0 = compile only).')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Interleaved repetitions of the whole grid.')
_LARGEST = flags.DEFINE_bool('largest_only', False,
                             'Stop at the first batch size (largest first) that fits.')
_PEAK = flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device for MFU (0 = none).')
_CPU_SCHEDULER = flags.DEFINE_list(
    'cpu_scheduler', ['auto'], 'config.xla_cpu_scheduler values (auto, default, memory_optimized).')
_ATTN_DROPOUT = flags.DEFINE_float('attention_dropout', 0.1,
                                   'Attention dropout (0 lets the fused attention run).')


def resident_gib() -> float:
  """The process's resident set now (VmRSS, Linux), GiB; nan elsewhere."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      line = next(l for l in f if l.startswith('VmRSS:'))
  except (OSError, StopIteration):
    return float('nan')
  return int(line.split()[1]) / 2 ** 20


def run_one(batch_size: int, heads: str, remat: str, dropout_rng: str, cpu_scheduler: str):
  cfg = config_lib.base().replace(
      dtype=_DTYPE.value, prediction_positions=heads, remat=remat != 'off',
      remat_policy='full' if remat == 'off' else remat,
      attention_dropout_rate=_ATTN_DROPOUT.value, dropout_rng=dropout_rng)
  optimizer_cfg = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=0, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=1.0, scale_lr_by_batch=False, reference_batch_size=1024))
  optimizer = optim.create_optimizer(optimizer_cfg, 1000, batch_size)
  schedule = optim.learning_rate_schedule(optimizer_cfg, 1000, batch_size)
  model = model_lib.MVPPretrainingModel(cfg)
  mesh = sharding.create_mesh((-1, 1, 1))
  rules = sharding.logical_rules('data_parallel')
  batch = base_batch.synthetic_batch(np.random.default_rng(0), batch_size, cfg.word_vocab_size,
                                     cfg.region_feature_dim)
  loss_fn = pretrain.loss_fn(model, ml_collections.ConfigDict(), stage=2, num_groups=1)
  step = train_step_lib.make_update_step(loss_fn, optimizer, schedule)
  options = xla_options.compiler_options(cpu_scheduler, cfg.remat)  # as the trainer compiles

  def init(rng):
    params = nn.unbox(model_lib.init_params(cfg, rng, {k: v[:2] for k, v in batch.items()}))
    return train_step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                     opt_state=optimizer.init(params), rng=rng)

  replicated = NamedSharding(mesh, PartitionSpec())
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=replicated,
                    compiler_options=options)(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    rss_init = resident_gib()
    device_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,),
                       compiler_options=options).lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    host_memory.release_free_heap()  # as the trainer does once its step is compiled
    rss_compiled = resident_gib()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', 0.0)) if cost else 0.0
    memory = compiled.memory_analysis()
    step_s = float('nan')
    if _STEPS.value:
      state, metrics = compiled(state, device_batch)
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        state, metrics = compiled(state, device_batch)
      jax.block_until_ready(metrics)
      step_s = (time.perf_counter() - start) / _STEPS.value
      if not np.isfinite(float(metrics['loss'])):
        raise RuntimeError(f'Non-finite loss {metrics}')
  gib = lambda n: n / 2 ** 30
  temp = memory.temp_size_in_bytes
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes + temp
          - memory.alias_size_in_bytes)
  mfu = (f' mfu={flops / step_s / _PEAK.value:.3f}' if _PEAK.value and _STEPS.value else '')
  print(f'batch={batch_size} heads={heads} remat={remat} dropout_rng={dropout_rng} '
        f'cpu_scheduler={cpu_scheduler} dtype={_DTYPE.value} '
        f'compile_s={compile_s:.1f} step_s={step_s:.3f} examples_per_s={batch_size / step_s:.2f} '
        f'flops_per_device={flops:.3e} temp_gib={gib(temp):.2f} peak_gib={gib(peak):.2f} '
        f'rss_after_init_gib={rss_init:.2f} rss_after_compile_gib={rss_compiled:.2f} '
        f'peak_rss_gib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f}'
        f'{mfu} devices={jax.device_count()} ({jax.devices()[0].device_kind})', flush=True)
  return step_s


def main(argv):
  del argv
  batches = [int(b) for b in _BATCHES.value]
  grid = list(itertools.product(batches, _HEADS.value, _REMAT.value, _DROPOUT_RNG.value,
                                _CPU_SCHEDULER.value))
  results = {}
  for _ in range(_REPEATS.value):
    for key in grid:
      try:
        results.setdefault(key, []).append(run_one(*key))
      except Exception as error:  # pylint: disable=broad-except
        if 'RESOURCE_EXHAUSTED' not in str(error) and 'out of memory' not in str(error).lower():
          raise
        print(f'batch={key[0]} heads={key[1]} remat={key[2]} dropout_rng={key[3]} '
              f'cpu_scheduler={key[4]}: does not fit ({type(error).__name__})')
        continue
      if _LARGEST.value:
        break
    if _LARGEST.value and results:
      break
  for (batch, heads, remat, dropout_rng, scheduler), times in results.items():
    if _STEPS.value:
      print(f'summary batch={batch} heads={heads} remat={remat} dropout_rng={dropout_rng} '
            f'cpu_scheduler={scheduler} step_s {min(times):.3f}-'
            f'{max(times):.3f} examples_per_s {batch / max(times):.2f}-{batch / min(times):.2f} '
            f'(n={len(times)})')


if __name__ == '__main__':
  app.run(main)
