"""Transparent huge pages for host memory: `main.py` restarts itself once with them on.

XLA:CPU allocates a step's buffers afresh on every execution (`posix_memalign`), and glibc hands
buffers this large out as new anonymous mappings, so every step first-touches all of its
temporaries page by page: about 0.57M page faults (2.3 GB zeroed by the kernel) per base step at
batch 8 on this project's machine. Where the kernel's THP mode is `madvise` (as there),
glibc's tunable `glibc.malloc.hugetlb=1` makes malloc ask for 2 MiB pages, which cuts the faults
about fivefold and the base step's time measurably (README, "Performance work"). Tunables are
read only when a process starts, so `restart_with_huge_pages` re-executes the current command
line once with the tunable added, before anything else has run. `MVP_JAX_HUGE_PAGES=0` opts out;
nothing happens on other systems (not Linux, not glibc ≥ 2.35, THP `always` or `never`), or when
`GLIBC_TUNABLES` already names `glibc.malloc.hugetlb`.

`release_free_heap` hands the heap memory that compilation freed back to the kernel
(`malloc_trim`): compilation leaves freed small blocks resident, a step's own buffers, too large
for the heap, never reuse them, and without it they stay in the process's resident set through
training (0.44 GiB after compiling the base step at batch 32; README, "Performance work").
"""

import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Callable, Mapping, Optional, Sequence

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'MVP_JAX_HUGE_PAGES'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
  """The kernel's THP mode ('always', 'madvise' or 'never'), None where it cannot be read."""
  try:
    with open(path, encoding='ascii') as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def glibc_supports_hugetlb(libc: Sequence[str] = ()) -> bool:
  """True on glibc 2.35 or newer (the release that added `glibc.malloc.hugetlb`)."""
  name, version = libc or platform.libc_ver()
  parts = version.split('.')
  try:
    return name == 'glibc' and (int(parts[0]), int(parts[1])) >= (2, 35)
  except (IndexError, ValueError):
    return False


def tunables_with_huge_pages(environ: Mapping[str, str], mode: Optional[str],
                             libc: Sequence[str] = (),
                             system: Optional[str] = None) -> Optional[str]:
  """The GLIBC_TUNABLES value to restart with, or None when no restart is wanted."""
  system = sys.platform if system is None else system
  current = environ.get('GLIBC_TUNABLES', '')
  if (environ.get(OPT_OUT, '1') == '0' or system != 'linux' or mode != 'madvise'
      or TUNABLE in current or not glibc_supports_hugetlb(libc)):
    return None
  return f'{current}:{TUNABLE}=1' if current else f'{TUNABLE}=1'


def restart_with_huge_pages(environ: Optional[Mapping[str, str]] = None,
                            execve: Callable[..., None] = os.execve) -> None:
  """Re-executes this process's command line with huge pages for malloc, where that helps.

  Call it first thing in a program's entry point: the restart repeats the interpreter's start
  and the imports done so far, and returns only when no restart is wanted.
  """
  environ = os.environ if environ is None else environ
  tunables = tunables_with_huge_pages(environ, thp_mode())
  if tunables is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  execve(sys.executable, sys.orig_argv, dict(environ, GLIBC_TUNABLES=tunables))


def release_free_heap() -> bool:
  """Returns the heap's free memory to the kernel (glibc `malloc_trim(0)`); False off glibc.

  The trainer calls it once its programs are compiled (`train.py`), before the first step.
  """
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return False
  libc = ctypes.CDLL(ctypes.util.find_library('c'))
  libc.malloc_trim(0)
  return True
