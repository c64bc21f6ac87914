r"""mvp-jax against the authors' PyTorch base pre-training step, interleaved in one run.

  python -m benchmarks.head_to_head --mvp_pytorch=/path/to/mvp_pytorch --batch_sizes=8,32 \
      --repeats=2 --steps=2

For every repeat, batch size and side (`torch`: `benchmarks.torch_reference`; `jax-off` / `jax-
<policy>`: `benchmarks.base_step` with heads on masked positions, fp32, remat off or on, the
trainer's XLA:CPU scheduler choice `--cpu_scheduler`) it runs
ONE subprocess, so each peak RSS is that side's alone, and the sides alternate so that a noisy
machine slows them alike. Both sides train on the same synthetic batch (`benchmarks.base_batch`)
with all five losses, dropout 0.1 and AdamW, on `--threads` threads (torch.set_num_threads; XLA's
Eigen pool is capped by the CPUs the process may use, so `--threads` also sets the affinity of
both sides when it is below the CPU count). Prints every run, then per batch size the s/step
ranges, the examples/s ratio range (jax / torch of the same repeat) and the peak RSS ratio, with
the load average at the start and the end. `--glibc_tunables` runs every side once per value
(the same environment for both), so the effect of, e.g., `glibc.malloc.hugetlb=1` is measured on
the original as well as on mvp-jax.
"""

import os
import re
import subprocess
import sys

from absl import app
from absl import flags

_PATH = flags.DEFINE_string('mvp_pytorch', None, 'Checkout of Junction4Nako/mvp_pytorch.')
_BATCHES = flags.DEFINE_list('batch_sizes', ['8', '32'], 'Batch sizes.')
_REMAT = flags.DEFINE_list('remat', ['off', 'full'], "mvp-jax remat: 'off' or a policy.")
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Interleaved repetitions.')
_STEPS = flags.DEFINE_integer('steps', 2, 'Timed steps per run (after one warm-up).')
_THREADS = flags.DEFINE_integer('threads', 2, 'Threads of each side.')
_DROPOUT_RNG = flags.DEFINE_string('dropout_rng', 'threefry', 'mvp-jax ModelConfig.dropout_rng.')
_XLA_FLAGS = flags.DEFINE_string('xla_flags', '', 'XLA_FLAGS of the mvp-jax side.')
_CPU_SCHEDULER = flags.DEFINE_string('cpu_scheduler', 'auto',
                                     "mvp-jax config.xla_cpu_scheduler (as the trainer: 'auto').")
_TUNABLES = flags.DEFINE_list(
    'glibc_tunables', [''], 'GLIBC_TUNABLES values, each run by both sides as a variant of its '
    "own (e.g. ',glibc.malloc.hugetlb=1': without and with transparent huge pages for malloc).")
flags.mark_flag_as_required('mvp_pytorch')


def command(side: str, batch: int):
  if side == 'torch':
    return ['benchmarks.torch_reference', f'--mvp_pytorch={_PATH.value}', f'--batch_size={batch}',
            f'--steps={_STEPS.value}', f'--threads={_THREADS.value}']
  return ['benchmarks.base_step', f'--batch_sizes={batch}', '--heads=masked',
          f'--remat={side[len("jax-"):]}', f'--dropout_rng={_DROPOUT_RNG.value}',
          f'--steps={_STEPS.value}', '--dtype=float32', f'--cpu_scheduler={_CPU_SCHEDULER.value}']


def run(side: str, batch: int, tunables: str = ''):
  """(s/step, peak RSS GiB, the result line) of one side in its own process."""
  env = dict(os.environ, OMP_NUM_THREADS=str(_THREADS.value), GLIBC_TUNABLES=tunables)
  if side != 'torch' and _XLA_FLAGS.value:
    env['XLA_FLAGS'] = _XLA_FLAGS.value
  prefix = []
  if _THREADS.value < (os.cpu_count() or 1):
    prefix = ['taskset', '-c', ','.join(str(i) for i in range(_THREADS.value))]
  result = subprocess.run(prefix + [sys.executable, '-m'] + command(side, batch), env=env,
                          capture_output=True, text=True, check=False)
  lines = [l for l in result.stdout.splitlines() if 'step_s=' in l and 'summary' not in l]
  if result.returncode or not lines:
    raise RuntimeError(f'{side} batch {batch} failed (rc {result.returncode}):\n'
                       f'{result.stderr[-3000:]}')
  line = f'{lines[-1]} glibc_tunables={tunables or "none"}'
  value = lambda key: float(re.search(rf'\b{key}=([0-9.]+)', line).group(1))
  return value('step_s'), value('peak_rss_gib'), line


def load() -> str:
  with open('/proc/loadavg', encoding='utf-8') as f:
    return ' '.join(f.read().split()[:3])


def main(argv):
  del argv
  sides = [(side, tunables) for tunables in _TUNABLES.value
           for side in ['torch'] + [f'jax-{r}' for r in _REMAT.value]]
  batches = [int(b) for b in _BATCHES.value]
  print(f'load average at start: {load()} on {os.cpu_count()} CPUs', flush=True)
  results = {}
  for repeat in range(_REPEATS.value):
    for batch in batches:
      for side in sides:
        step_s, rss, line = run(side[0], batch, side[1])
        results.setdefault((batch, side), []).append((step_s, rss))
        print(f'repeat={repeat} load={load()} {line}', flush=True)
  print(f'load average at end: {load()}', flush=True)
  for batch in batches:
    for side in sides:
      torch_runs = results[(batch, ('torch', side[1]))]
      runs = results[(batch, side)]
      times = [t for t, _ in runs]
      rss = max(r for _, r in runs)
      text = (f'summary batch={batch} side={side[0]} glibc_tunables={side[1] or "none"} '
              f'step_s={min(times):.2f}-{max(times):.2f} peak_rss_gib={rss:.2f}')
      if side[0] != 'torch':
        ratios = [t_torch / t for (t_torch, _), (t, _) in zip(torch_runs, runs)]
        rss_ratio = rss / max(r for _, r in torch_runs)
        text += (f' examples_per_s_vs_torch={min(ratios):.2f}-{max(ratios):.2f}x '
                 f'peak_rss_vs_torch={rss_ratio:.2f}x')
      print(text, flush=True)


if __name__ == '__main__':
  app.run(main)
