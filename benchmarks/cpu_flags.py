r"""XLA:CPU flags of the installed jaxlib on a 4096² fp32 matmul (and optionally the base step).

  python -m benchmarks.cpu_flags --reps=3
  python -m benchmarks.cpu_flags --flag_sets=default,xnnpack --base_step   # + benchmarks.base_step

Every flag set runs in its own subprocess with `XLA_FLAGS` set (the flags are read once, when the
backend starts). The matmul line gives GFLOP/s (best and worst of `--reps` after one warm-up)
and which library paths the compiled HLO takes (`__ynn_fusion` is the default dot path of
this jaxlib, `__xnn_fusion`, oneDNN custom calls; `none` = XLA's own emitter / Eigen),
so a flag that parses but changes nothing shows up as such; torch's matmul on the same threads
is printed for comparison. The flag names are the `xla_cpu_*` options of this jaxlib (0.10.2);
`xla_cpu_use_thunk_runtime` is reported by XLA as "no longer supported" and is not listed.
"""

import os
import re
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAG_SETS = {
    'default': '',
    'eigen': '--xla_cpu_experimental_ynn_fusion_type=',  # no YNNPACK: XLA's Eigen dots
    'xnnpack_no_ynn': '--xla_cpu_use_xnnpack=true --xla_cpu_experimental_ynn_fusion_type=',
    'xnnpack': '--xla_cpu_use_xnnpack=true',
    'xnn_dot': '--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT',
    'xnn_dot_eltwise': ('--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT,'
                        'LIBRARY_FUSION_TYPE_ELTWISE'),
    'ynn_dot': '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn_dot': '--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT',
    'fast_math': '--xla_cpu_enable_fast_math=true',
    'fast_runtime': '--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME',
    'no_eigen_threads': '--xla_cpu_multi_thread_eigen=false',
    'vector_512': '--xla_cpu_prefer_vector_width=512',
}

_SETS = flags.DEFINE_list('flag_sets', list(FLAG_SETS), f'Names from {sorted(FLAG_SETS)}.')
_SIZE = flags.DEFINE_integer('size', 4096, 'Matmul side.')
_REPS = flags.DEFINE_integer('reps', 3, 'Timed matmuls per flag set.')
_BASE = flags.DEFINE_bool('base_step', False, 'Also run benchmarks.base_step (batch 8, masked '
                          'heads, remat off, fp32) under each flag set.')
_CHILD = flags.DEFINE_string('child', '', 'Internal: run the measurement of this mode here.')


def child_matmul(size: int, reps: int):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  text = compiled.as_text()
  # Library fusions carry backend_config kind "__ynn_fusion" / "__xnn_fusion" / ...; oneDNN
  # calls are custom calls; plain Eigen dots are neither.
  libraries = sorted(set(re.findall(r'"kind":"(__\w+)"', text))
                     | set(re.findall(r'custom_call_target="(\w*onednn\w*)"', text)))
  jax.block_until_ready(compiled(a, b))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(a, b))
    times.append(time.perf_counter() - start)
  gflop = 2 * size ** 3 / 1e9
  print(f'gflops_best={gflop / min(times):.1f} gflops_worst={gflop / max(times):.1f} '
        f'libraries={",".join(libraries) or "none"}', flush=True)


def torch_matmul(size: int, reps: int) -> str:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count() or 1)
  a, b = torch.randn(size, size), torch.randn(size, size)
  a @ b  # pylint: disable=pointless-statement
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    a @ b  # pylint: disable=pointless-statement
    times.append(time.perf_counter() - start)
  gflop = 2 * size ** 3 / 1e9
  return f'gflops_best={gflop / min(times):.1f} gflops_worst={gflop / max(times):.1f}'


def run(args, xla_flags: str) -> str:
  env = dict(os.environ, XLA_FLAGS=xla_flags)
  result = subprocess.run([sys.executable, '-m'] + args, env=env, capture_output=True, text=True,
                          check=False)
  if result.returncode:
    return f'FAILED rc={result.returncode}: {result.stderr.strip().splitlines()[-1:]}'
  lines = [l for l in result.stdout.splitlines() if re.search(r'gflops_best=|^batch=', l)]
  return ' | '.join(lines)


def main(argv):
  del argv
  if _CHILD.value == 'matmul':
    child_matmul(_SIZE.value, _REPS.value)
    return
  unknown = sorted(set(_SETS.value) - set(FLAG_SETS))
  if unknown:
    raise ValueError(f'Unknown flag sets {unknown}; known: {sorted(FLAG_SETS)}.')
  print(f'torch {_SIZE.value}² fp32 matmul: {torch_matmul(_SIZE.value, _REPS.value)}', flush=True)
  for name in _SETS.value:
    matmul = run(['benchmarks.cpu_flags', '--child=matmul', f'--size={_SIZE.value}',
                  f'--reps={_REPS.value}'], FLAG_SETS[name])
    print(f'{name} [{FLAG_SETS[name] or "no flags"}] matmul: {matmul}', flush=True)
    if _BASE.value:
      step = run(['benchmarks.base_step', '--batch_sizes=8', '--heads=masked', '--remat=off',
                  '--steps=2'], FLAG_SETS[name])
      print(f'{name} base step: {step}', flush=True)


if __name__ == '__main__':
  app.run(main)
