"""The `:arg` of a config file (`--config=configs/x.py:smoke,scratch`) as a set of switches.

Not a runnable config. Every config's `get_config(arg)` calls `parse(arg, known)`, so a typo
(`:smok`) is refused with the valid switches instead of silently running the full config.
"""

from typing import FrozenSet, Iterable


def parse(arg: str, known: Iterable[str], config_name: str = 'config') -> FrozenSet[str]:
  """'smoke,scratch' -> {'smoke', 'scratch'}; '' -> {}; an unknown switch raises ValueError."""
  known = tuple(known)
  switches = frozenset(s.strip() for s in (arg or '').split(',') if s.strip())
  unknown = sorted(switches - set(known))
  if unknown:
    raise ValueError(f'{config_name}: unknown config switch(es) {unknown} in {arg!r}; valid '
                     f'switches: {list(known) or "none"} (comma-separated).')
  return switches
