"""`mvp_jax.host_memory`: when `main.py` restarts with huge pages for malloc, and that they land."""

import os
import subprocess
import sys

import pytest

from mvp_jax import host_memory

GLIBC = ('glibc', '2.36')


@pytest.mark.parametrize('environ, mode, libc, system, expected', [
    ({}, 'madvise', GLIBC, 'linux', 'glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', GLIBC, 'linux',
     'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', GLIBC, 'linux', None),  # the user's
    ({'MVP_JAX_HUGE_PAGES': '0'}, 'madvise', GLIBC, 'linux', None),
    ({}, 'always', GLIBC, 'linux', None),  # every anonymous mapping is huge already
    ({}, 'never', GLIBC, 'linux', None),
    ({}, None, GLIBC, 'linux', None),
    ({}, 'madvise', ('glibc', '2.34'), 'linux', None),  # no such tunable yet
    ({}, 'madvise', ('', ''), 'linux', None),  # musl
    ({}, 'madvise', GLIBC, 'darwin', None),
])
def test_when_to_restart(environ, mode, libc, system, expected):
  assert host_memory.tunables_with_huge_pages(environ, mode, libc, system) == expected


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert host_memory.thp_mode(str(path)) == 'madvise'
  path.write_text('garbage\n')
  assert host_memory.thp_mode(str(path)) is None
  assert host_memory.thp_mode(str(tmp_path / 'missing')) is None


def test_restart_execs_the_same_command_line(monkeypatch):
  monkeypatch.setattr(host_memory, 'thp_mode', lambda: 'madvise')
  monkeypatch.setattr(host_memory.platform, 'libc_ver', lambda: GLIBC)
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  calls = []
  host_memory.restart_with_huge_pages({'HOME': '/h'}, execve=lambda *a: calls.append(a))
  (path, argv, env), = calls
  assert path == sys.executable and argv == sys.orig_argv
  assert env == {'HOME': '/h', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  calls.clear()
  host_memory.restart_with_huge_pages(env, execve=lambda *a: calls.append(a))
  assert not calls  # the restarted process goes on


# In the restarted process 256 MiB from glibc's malloc (as XLA:CPU's buffers; numpy would madvise
# its own arrays) are backed by huge pages: glibc really asked for them.
_CHILD = """
import ctypes, os
from mvp_jax import host_memory
host_memory.restart_with_huge_pages()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
size = 2 ** 28
buffer = libc.malloc(size)
ctypes.memset(buffer, 1, size)
with open('/proc/self/smaps_rollup') as f:
  huge_kib = next(int(l.split()[1]) for l in f if l.startswith('AnonHugePages:'))
print(os.environ.get('GLIBC_TUNABLES', '-'), huge_kib, ctypes.string_at(buffer + size - 1, 1)[0])
"""


def test_restart_turns_huge_pages_on_in_a_real_process():
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT)}
  expected = host_memory.tunables_with_huge_pages(env, host_memory.thp_mode())
  result = subprocess.run([sys.executable, '-c', _CHILD], env=env, capture_output=True,
                          text=True, check=True, timeout=120)
  tunables, huge_kib, last_byte = result.stdout.split()
  assert last_byte == '1'
  if expected is None:
    pytest.skip(f'no restart wanted here (THP mode {host_memory.thp_mode()!r}, '
                f'{host_memory.platform.libc_ver()}); restart checked with a fake execve')
  assert tunables == expected
  assert int(huge_kib) >= 128 * 1024, result.stdout  # most of the 256 MiB in 2 MiB pages
  opted_out = subprocess.run([sys.executable, '-c', _CHILD], env=dict(env, MVP_JAX_HUGE_PAGES='0'),
                             capture_output=True, text=True, check=True, timeout=120)
  huge_kib = int(opted_out.stdout.split()[-2])
  assert huge_kib < 64 * 1024, opted_out.stdout  # without the tunable: 4 KiB pages


_FRAGMENTED_HEAP = r"""
import ctypes
from mvp_jax import host_memory

def resident_mib():
  with open('/proc/self/status') as f:
    return next(int(l.split()[1]) for l in f if l.startswith('VmRSS:')) / 1024

libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(4000) for _ in range(100_000)]  # 400 MB of heap blocks, as a compiler's
for block in blocks:
  ctypes.memset(block, 1, 4000)
for index, block in enumerate(blocks):
  if index % 64:  # every 64th stays: the freed memory is held in the middle of the heap
    libc.free(block)
before = resident_mib()
released = host_memory.release_free_heap()
print(released, before, resident_mib())
"""


def test_release_free_heap_gives_freed_blocks_back():
  env = dict(os.environ, GLIBC_TUNABLES='')  # 4 KiB pages, so free pages are whole pages
  result = subprocess.run([sys.executable, '-c', _FRAGMENTED_HEAP], env=env, capture_output=True,
                          text=True, check=True, timeout=120)
  released, before, after = result.stdout.split()
  if released == 'False':
    pytest.skip('not glibc: nothing to release')
  assert float(before) > 350, result.stdout  # ~390 MB freed but resident
  assert float(before) - float(after) > 300, result.stdout
