"""Test setup: 8 fake CPU devices (set before jax is imported) and fast compilation."""

import os
import pathlib
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

jax.config.update('jax_platforms', 'cpu')
# Tests run tiny models: XLA's optimisation passes cost more than they save.
jax.config.update('jax_disable_most_optimizations', True)
# Many tests compile the same tiny train step; the persistent cache compiles it once per session.
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('MVP_JAX_TEST_CACHE', '/tmp/mvp_jax_test_xla_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

REFERENCE_DIR = ROOT.parent / 'shared' / 'reference'


@pytest.fixture(scope='session')
def reference_dir() -> pathlib.Path:
  """`../shared/reference` beside the checkout; tests needing it skip when it is absent."""
  if not (REFERENCE_DIR / 'golden_tiny.npz').exists():
    pytest.skip(f'{REFERENCE_DIR} is absent (a fresh clone without ../shared): the golden '
                'parity test needs the authors\' reference outputs.')
  return REFERENCE_DIR


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: JAX subprocesses, whole notebook runs, or several '
                          'whole training runs; deselected unless `-m slow` is given (CI runs '
                          'them as a second step)')


def pytest_collection_modifyitems(config, items):
  """Deselects the `slow` tests unless the -m expression names them."""
  if 'slow' in (config.option.markexpr or ''):
    return
  kept = [item for item in items if item.get_closest_marker('slow') is None]
  if len(kept) < len(items):
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept
