"""JAX setup of the multi-process test workers: CPU as tests/conftest.py sets it, gloo
collectives, and the join of the processes over localhost (a no-op for 1 process).

The worker sets XLA_FLAGS (its device count) before it imports jax, then calls `start`.
"""

import os

import jax


def start(process_id: int, num_processes: int, port: str) -> None:
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_disable_most_optimizations', True)  # as tests/conftest.py
  jax.config.update('jax_compilation_cache_dir',
                    os.environ.get('MVP_JAX_TEST_CACHE', '/tmp/mvp_jax_test_xla_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  if num_processes > 1:
    # Generous timeouts: on a loaded 2-core machine one process can lag minutes behind.
    jax.distributed.initialize(f'localhost:{port}', num_processes, process_id,
                               initialization_timeout=900, heartbeat_timeout_seconds=900,
                               shutdown_timeout_seconds=900)
