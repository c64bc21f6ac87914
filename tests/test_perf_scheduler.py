"""Issue 15 item 7: the XLA:CPU scheduler the trainer compiles its programs with.

`xla_options.compiler_options` picks XLA:CPU's memory-optimised scheduler for programs without
remat; these tests check the choice, that the option reaches XLA and lowers a real update step's
temporaries without changing a single bit of its result.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import model as model_lib
from mvp_jax import optim
from mvp_jax import train_step as train_step_lib
from mvp_jax import xla_options
from mvp_jax.tasks import pretrain

import test_perf_step  # pylint: disable=g-bad-import-order

MEMORY_OPTIMIZED = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


@pytest.mark.parametrize('scheduler, remat, backend, expected', [
    ('auto', False, 'cpu', MEMORY_OPTIMIZED),
    ('auto', True, 'cpu', None),  # ordered_remat is ordered for the default scheduler
    ('memory_optimized', True, 'cpu', MEMORY_OPTIMIZED),
    ('default', False, 'cpu', None),
    ('auto', False, 'gpu', None),
    ('memory_optimized', False, 'tpu', None),
])
def test_which_scheduler(scheduler, remat, backend, expected):
  assert xla_options.compiler_options(scheduler, remat, backend) == expected


def test_unknown_scheduler_is_refused():
  with pytest.raises(ValueError, match="xla_cpu_scheduler 'memory'"):
    xla_options.compiler_options('memory', False, 'cpu')


def test_uses_remat_sees_the_vision_tower():
  assert not xla_options.uses_remat(config_lib.tiny())
  assert xla_options.uses_remat(config_lib.tiny(remat=True))
  pixels = config_lib.tiny(region_feature_dim=16 + 6, vision=dict(
      tower='vit', image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
      remat=True))
  assert not pixels.remat and xla_options.uses_remat(pixels)


def test_memory_optimized_step_keeps_less_and_computes_the_same():
  config = test_perf_step.CONFIG
  model = model_lib.MVPPretrainingModel(config)
  optimizer_cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
      scale_lr_by_batch=False, reference_batch_size=1024))
  batch_size = test_perf_step.BATCH
  optimizer = optim.create_optimizer(optimizer_cfg, 10, batch_size)
  step = train_step_lib.make_update_step(
      pretrain.loss_fn(model, ml_collections.ConfigDict(), stage=0, num_groups=1), optimizer,
      optim.learning_rate_schedule(optimizer_cfg, 10, batch_size))
  batch = test_perf_step.make_batch()
  params = nn.unbox(model_lib.init_params(config, jax.random.PRNGKey(0), batch))
  state = train_step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(1))
  temps, results = [], []
  for options in (None, xla_options.compiler_options('auto', config.remat, 'cpu')):
    compiled = jax.jit(step, compiler_options=options).lower(state, batch).compile()
    temps.append(compiled.memory_analysis().temp_size_in_bytes)
    results.append(jax.tree_util.tree_leaves(compiled(state, batch)))
  assert temps[1] < 0.85 * temps[0], temps  # 96 KiB against 133 KiB when written
  for default, memory_optimized in zip(*results, strict=True):
    np.testing.assert_array_equal(np.asarray(default), np.asarray(memory_optimized))
