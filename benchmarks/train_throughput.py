r"""Training throughput of the MVPTR update step: examples/s, step time, MFU, peak memory.

  python -m benchmarks.train_throughput --config=tiny --batch_size=64 --steps=20
  python -m benchmarks.train_throughput --config=base --batch_size=8 --steps=3

Runs the real jitted pre-training step (all five losses, hard negatives, AdamW) of
`mvp_jax.tasks.pretrain` + `mvp_jax.train_step` on synthetic batches of the config's shapes, on
whatever devices JAX sees (data-parallel over all of them), initialised sharded and unboxed as
the trainer does. FLOPs come from XLA's cost analysis of the compiled step, which counts ONE
device's share of the partitioned program: TFLOP/s are printed per device and global (× the
device count), and MFU is the per-device FLOP/s over the per-device peak (`--peak_flops` when the
device is not in `metrics.PEAK_FLOPS`). Peak memory is the device's `peak_bytes_in_use` where
reported, else the process's max RSS.
"""

import resource
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from configs import mvp_base
from configs import mvp_tiny
from mvp_jax import metrics as metrics_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax import trainer_lib
from mvp_jax.config import ModelConfig
from mvp_jax.tasks import pretrain
# The tiny config reads its vocabulary from ShapesWorld; these are its measured sizes.
_TINY_VOCAB = dict(word_vocab_size=87, vocab_size=363)
_BASE_VOCAB = dict(word_vocab_size=30522, vocab_size=86051)


def synthetic_batch(rng: np.random.Generator, model_cfg: ModelConfig, data_cfg, batch: int):
  """A batch of the pipeline's keys and shapes with random ids, masks and 15% labels."""
  text_len = data_cfg.max_seq_length + data_cfg.max_phrases
  tags, regions = data_cfg.max_tag_length, data_cfg.max_img_seq_length
  ids = lambda shape: rng.integers(5, model_cfg.word_vocab_size, shape).astype(np.int32)
  labels = lambda shape: np.where(rng.random(shape) < 0.15, ids(shape), -1).astype(np.int32)
  return dict(
      input_ids_a=ids((batch, text_len)), attention_mask_a=np.ones((batch, text_len), np.int32),
      token_type_ids_a=np.zeros((batch, text_len), np.int32), input_ids_b=ids((batch, tags)),
      token_type_ids_b=np.ones((batch, tags), np.int32),
      attention_mask_b=np.ones((batch, tags + regions), np.int32),
      img_feats=rng.standard_normal((batch, regions, model_cfg.region_feature_dim)
                                    ).astype(np.float32),
      phrase_index=np.tile([[text_len - 1 - data_cfg.max_phrases, text_len - 1]], (batch, 1)
                           ).astype(np.int32),
      img_index=np.tile([[text_len, text_len + regions]], (batch, 1)).astype(np.int32),
      mlm_labels_a=labels((batch, text_len)), mlm_labels_b=labels((batch, tags)))


def main(argv):
  del argv
  flag = flags.FLAGS
  config = (mvp_tiny if flag.config == 'tiny' else mvp_base).get_config()
  values = dict(config.model, **(_TINY_VOCAB if flag.config == 'tiny' else _BASE_VOCAB))
  if flag.dtype:
    values['dtype'] = flag.dtype
  if flag.remat >= 0:
    values['remat'] = bool(flag.remat)
  model_cfg = ModelConfig.from_dict(values)
  setup = trainer_lib.create_mesh(ml_collections.ConfigDict(dict(
      mesh_shape=(-1, 1, 1), sharding_rules='data_parallel')))
  model = pretrain.create_model(config, model_cfg)
  total_steps = config.optimizer.warmup_steps + flag.steps + 10
  optimizer = optim.create_optimizer(config.optimizer, total_steps, flag.batch_size)
  schedule = optim.learning_rate_schedule(config.optimizer, total_steps, flag.batch_size)
  batch = synthetic_batch(np.random.default_rng(0), model_cfg, config.data, flag.batch_size)
  init_batch = {k: v[:2] for k, v in batch.items()}
  state, state_sharding = trainer_lib.sharded_init(
      lambda rng: pretrain.init_params(model, rng, init_batch), optimizer,
      jax.random.PRNGKey(0), setup)
  step = train_step_lib.make_update_step(
      pretrain.loss_fn(model, config, stage=2, num_groups=1), optimizer, schedule)

  def ruled(state, batch):
    with nn.logical_axis_rules(setup.rules):
      return step(state, batch)

  with jax.set_mesh(setup.mesh):
    jitted = jax.jit(ruled, in_shardings=(state_sharding, setup.batch_sharding),
                     out_shardings=(state_sharding, setup.replicated), donate_argnums=(0,))
    device_batch = jax.device_put(batch, setup.batch_sharding)
    start = time.perf_counter()
    compiled = jitted.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    flops = trainer_lib.flops(compiled)
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(flag.steps):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / flag.steps
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  stats = jax.devices()[0].memory_stats() or {}
  peak_memory = stats.get('peak_bytes_in_use')
  memory_source = 'device'
  if peak_memory is None:
    peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory_source = 'process max RSS'
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, flag.peak_flops)
  num_devices = setup.mesh.devices.size
  print(f'config={flag.config} params={params:,} dtype={model_cfg.dtype} '
        f'remat={model_cfg.remat} batch={flag.batch_size} devices={num_devices} '
        f'({jax.devices()[0].device_kind})')
  print(f'compile_s={compile_s:.1f} step_s={step_s:.4f} '
        f'examples_per_s={flag.batch_size / step_s:.1f}')
  if flops:
    rates = metrics_lib.throughput(flops, 1, step_s, num_devices, peak)
    mfu = f'{rates["mfu"]:.3f}' if 'mfu' in rates else 'n/a (unknown peak)'
    print(f'flops_per_device_step={flops:.3e} '
          f'tflops_per_s_per_device={rates["tflops_per_s_per_device"]:.3f} '
          f'tflops_per_s_global={rates["tflops_per_s_global"]:.3f} mfu={mfu} (per device)')
  print(f'peak_memory_gb={peak_memory / 2**30:.2f} ({memory_source}); '
        f'loss={float(jnp.asarray(metrics["loss"])):.4f}')


if __name__ == '__main__':
  flags.DEFINE_enum('config', 'tiny', ['tiny', 'base'], 'Which model config.')
  flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
  flags.DEFINE_integer('steps', 20, 'Timed steps (after one warm-up step).')
  flags.DEFINE_string('dtype', '', 'Override compute dtype (float32 / bfloat16).')
  flags.DEFINE_integer('remat', -1, 'Override remat (0/1); -1 keeps the config value.')
  flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s of ONE device for MFU (0 = table).')
  app.run(main)
