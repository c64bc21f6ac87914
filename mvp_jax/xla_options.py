"""XLA compiler options of the trainer's programs (`config.xla_cpu_scheduler`).

Kept apart from `trainer_lib` so that a benchmark of the step can use the trainer's choice
without importing the trainer's writers (and, through them, TensorFlow).
"""

from typing import Dict, Optional

import jax

CPU_SCHEDULERS = ('auto', 'default', 'memory_optimized')
_MEMORY_OPTIMIZED = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


def compiler_options(cpu_scheduler: str, remat: bool,
                     backend: Optional[str] = None) -> Optional[Dict[str, str]]:
  """XLA options of the trainer's init and update-step programs (`config.xla_cpu_scheduler`).

  Only the CPU backend has a choice here. XLA:CPU's default scheduler orders a program for
  concurrency and keeps many activations alive together; its memory-optimised scheduler lowers
  the base step's temporaries without remat from 2.11 to 1.44 GiB at batch 8 and from 6.83 to
  5.59 GiB at batch 32, at the same speed within this machine's noise (README, "Performance
  work"). With remat it does the opposite (`dots_no_batch` at batch 32: 3.01 → 4.57 GiB), since
  `layers.ordered_remat` orders the recomputation for the default scheduler. 'auto' therefore
  picks 'memory_optimized' without remat and 'default' with it; `backend` (default: JAX's) other
  than 'cpu' gives None.
  """
  if cpu_scheduler not in CPU_SCHEDULERS:
    raise ValueError(f'xla_cpu_scheduler {cpu_scheduler!r} is not one of {CPU_SCHEDULERS}.')
  if (backend or jax.default_backend()) != 'cpu':
    return None
  if cpu_scheduler == 'auto':
    cpu_scheduler = 'default' if remat else 'memory_optimized'
  return dict(_MEMORY_OPTIMIZED) if cpu_scheduler == 'memory_optimized' else None


def uses_remat(model_config) -> bool:
  """Whether the MVPTR layers or the vision tower (`model.vision`) are rematerialised."""
  return bool(model_config.remat or (model_config.vision and model_config.vision.remat))
