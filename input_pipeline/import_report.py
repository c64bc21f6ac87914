"""The one report of every importer: problem counts, warnings, statistics and first messages.

An importer calls `problem(kind, where, detail)` for an entry it cannot use (`where` names the
file and line or index). With on_error='raise' the first problem raises `error` at once; with
'skip' the entry is left out and counted. `lost_fraction` is the share of the entries read
(`stats[read_key]`) that did not become output (`stats[kept_key]`); importers fail above their
`max_error_fraction` of it.
"""

import collections
import dataclasses
from typing import Optional, Sequence, Type


@dataclasses.dataclass
class ImportReport:
  """Counts and first `max_messages` messages of an import.

  Attributes:
    on_error: 'skip' or 'raise'.
    max_messages: messages kept (all problems are counted).
    error: exception class raised under on_error='raise'.
    kinds: the allowed problem kinds, or None for any.
    read_key, kept_key: the `stats` counting entries read and entries kept.
  """
  on_error: str = 'skip'
  max_messages: int = 20
  error: Type[Exception] = ValueError
  kinds: Optional[Sequence[str]] = None
  read_key: str = 'examples_read'
  kept_key: str = 'examples'
  problems: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  warnings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.on_error not in ('skip', 'raise'):
      raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")

  def problem(self, kind: str, where: str, detail: str) -> None:
    if self.kinds is not None and kind not in self.kinds:
      raise ValueError(f'unknown problem kind {kind!r}; known: {tuple(self.kinds)}')
    self.problems[kind] += 1
    message = f'{where}: {kind}: {detail}'
    self._keep(message)
    if self.on_error == 'raise':
      raise self.error(message)

  def warning(self, kind: str, where: str, detail: str) -> None:
    self.warnings[kind] += 1
    self._keep(f'{where}: warning {kind}: {detail}')

  def _keep(self, message: str) -> None:
    if len(self.messages) < self.max_messages:
      self.messages.append(message)

  @property
  def lost_fraction(self) -> float:
    """Share of the entries read that were left out (0 when none was read)."""
    read = self.stats[self.read_key]
    return (read - self.stats[self.kept_key]) / read if read else 0.0

  def to_dict(self) -> dict:
    return {'problems': dict(self.problems), 'warnings': dict(self.warnings),
            'stats': dict(self.stats), 'lost_fraction': self.lost_fraction,
            'messages': list(self.messages)}

  def summary(self) -> str:
    read, kept = self.stats[self.read_key], self.stats[self.kept_key]
    lines = [f'{kept} {self.kept_key} from {read} {self.read_key} '
             f'({self.lost_fraction:.2%} left out)',
             ', '.join(f'{k}={v}' for k, v in sorted(self.stats.items()))]
    for title, counts in (('problems', self.problems), ('warnings', self.warnings)):
      if counts:
        lines.append(f'{title}: ' + ', '.join(f'{k}={v}' for k, v in sorted(counts.items())))
    lines.extend('  ' + m for m in self.messages)
    return '\n'.join(lines)
