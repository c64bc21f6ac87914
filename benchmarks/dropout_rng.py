r"""CPU time of the base step's dropout masks (batch 8) under each `ModelConfig.dropout_rng`.

  python -m benchmarks.dropout_rng --batch_size=8 --reps=5

Draws the masks of every dropout site of one base pre-training step (embeddings, regions, and
per layer the attention probabilities, attention output and FFN output of the 6 text, 6 visual,
6 cross-modal and 6 hard-negative cross-modal layers; about 35M elements at batch 8) with
`layers.Dropout` and reports process CPU seconds (`time.process_time`, less sensitive to other
jobs on a shared machine than wall time) and wall seconds per step, min over `--reps`.
"""

import time

import jax
import jax.numpy as jnp
from absl import app
from absl import flags

from mvp_jax import layers

_BATCH = flags.DEFINE_integer('batch_size', 8, 'Batch size.')
_REPS = flags.DEFINE_integer('reps', 5, 'Timed repetitions.')
_IMPLS = flags.DEFINE_list('impls', ['threefry', 'rbg', 'unsafe_rbg'], 'dropout_rng values.')

HIDDEN, HEADS, LAYERS = 768, 12, 6


def site_shapes(batch: int):
  """[shape] of every dropout mask of one step (lengths 40 text, 20 + 50 visual, 90 cross)."""
  shapes = [(batch, 40, HIDDEN), (batch, 20, HIDDEN), (batch, 50, HIDDEN)]
  for length, copies in ((40, 1), (70, 1), (90, 2)):
    shapes += [(batch, HEADS, length, length), (batch, length, HIDDEN),
               (batch, length, HIDDEN)] * (LAYERS * copies)
  return shapes


def main(argv):
  del argv
  shapes = site_shapes(_BATCH.value)
  print(f'{len(shapes)} sites, {sum(jnp.zeros(s).size for s in shapes) / 1e6:.1f}M elements')
  for impl in _IMPLS.value:
    def masks(key, impl=impl):
      total = 0.0
      for index, shape in enumerate(shapes):
        out = layers.Dropout(0.1, rng_impl=impl).apply(
            {}, jnp.ones(shape), False, rngs={'dropout': jax.random.fold_in(key, index)})
        total = total + out.sum()
      return total
    compiled = jax.jit(masks).lower(jax.random.PRNGKey(0)).compile()
    jax.block_until_ready(compiled(jax.random.PRNGKey(0)))
    cpu, wall = [], []
    for rep in range(_REPS.value):
      c0, w0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(compiled(jax.random.PRNGKey(rep)))
      cpu.append(time.process_time() - c0)
      wall.append(time.perf_counter() - w0)
    print(f'dropout_rng={impl} cpu_s={min(cpu):.3f} wall_s={min(wall):.3f} '
          f'(max cpu {max(cpu):.3f}, wall {max(wall):.3f})', flush=True)


if __name__ == '__main__':
  app.run(main)
