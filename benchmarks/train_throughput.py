r"""Training throughput of the MVPTR update step: examples/s, step time, MFU, peak memory.

  python -m benchmarks.train_throughput --config=tiny --batch_size=64 --steps=20
  python -m benchmarks.train_throughput --config=base --batch_size=8 --steps=3

Runs the real jitted step (all five losses, hard negatives, AdamW) of `mvp_jax.train_step` on
synthetic batches of the config's shapes, on whatever devices JAX sees (data-parallel over all of
them). FLOPs come from XLA's cost analysis of the compiled step; MFU divides the achieved FLOP/s
by the device's peak (`--peak_flops` per device when the device is not in `train.PEAK_FLOPS`).
Peak memory is the device's `peak_bytes_in_use` where reported, else the process's max RSS.
"""

import functools
import resource
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from configs import mvp_base
from configs import mvp_tiny
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import sharding
from mvp_jax import train
from mvp_jax import train_step as train_step_lib
from mvp_jax import trainer_lib
from mvp_jax.config import ModelConfig

_CONFIG = flags.DEFINE_enum('config', 'tiny', ['tiny', 'base'], 'Which model config.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after one warm-up step).')
_DTYPE = flags.DEFINE_string('dtype', '', 'Override compute dtype (float32 / bfloat16).')
_REMAT = flags.DEFINE_integer('remat', -1, 'Override remat (0/1); -1 keeps the config value.')
_PEAK = flags.DEFINE_float('peak_flops', 0.0, 'Peak FLOP/s per device for MFU (0 = table).')
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
  config = (mvp_tiny if _CONFIG.value == 'tiny' else mvp_base).get_config()
  values = dict(config.model, **(_TINY_VOCAB if _CONFIG.value == 'tiny' else _BASE_VOCAB))
  if _DTYPE.value:
    values['dtype'] = _DTYPE.value
  if _REMAT.value >= 0:
    values['remat'] = bool(_REMAT.value)
  model_cfg = ModelConfig.from_dict(values)
  mesh = sharding.create_mesh((-1, 1, 1))
  rules = sharding.logical_rules('data_parallel')
  batch_sharding = sharding.batch_sharding(mesh)
  model = model_lib.MVPPretrainingModel(model_cfg)
  total_steps = config.optimizer.warmup_steps + _STEPS.value + 10
  optimizer = optim.create_optimizer(config.optimizer, total_steps, _BATCH.value)
  schedule = optim.learning_rate_schedule(config.optimizer, total_steps, _BATCH.value)
  batch = synthetic_batch(np.random.default_rng(0), model_cfg, config.data, _BATCH.value)
  init = functools.partial(train.create_train_state, model_cfg, optimizer,
                           init_batch={k: v[:2] for k, v in batch.items()})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_sharding = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
    step = train_step_lib.make_train_step(model, optimizer, schedule, stage=2, num_groups=1,
                                          weights={})
    jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                     out_shardings=(state_sharding, NamedSharding(mesh, PartitionSpec())),
                     donate_argnums=(0,))
    device_batch = jax.device_put(batch, batch_sharding)
    start = time.perf_counter()
    compiled = jitted.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    flops = trainer_lib.flops(compiled)
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / _STEPS.value
  params = sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(abstract.params)))
  stats = jax.devices()[0].memory_stats() or {}
  peak_memory = stats.get('peak_bytes_in_use')
  memory_source = 'device'
  if peak_memory is None:
    peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memory_source = 'process max RSS'
  peak = _PEAK.value or train.PEAK_FLOPS.get(jax.devices()[0].device_kind)
  print(f'config={_CONFIG.value} params={params:,} dtype={model_cfg.dtype} '
        f'remat={model_cfg.remat} batch={_BATCH.value} devices={jax.device_count()} '
        f'({jax.devices()[0].device_kind})')
  print(f'compile_s={compile_s:.1f} step_s={step_s:.4f} '
        f'examples_per_s={_BATCH.value / step_s:.1f}')
  if flops:
    achieved = flops / step_s
    mfu = f'{achieved / (peak * jax.device_count()):.3f}' if peak else 'n/a (unknown peak)'
    print(f'flops_per_step={flops:.3e} achieved_tflops={achieved / 1e12:.3f} mfu={mfu}')
  print(f'peak_memory_gb={peak_memory / 2**30:.2f} ({memory_source}); '
        f'loss={float(jnp.asarray(metrics["loss"])):.4f}')


if __name__ == '__main__':
  app.run(main)
