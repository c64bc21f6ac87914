"""Progress of a running evaluation, logged with absl: done/total steps, elapsed time and ETA."""

import time

from absl import logging


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes}:{seconds:02d}'


class Progress:
  """Logs `name phase: done/total steps, elapsed m:ss, ETA m:ss` about `num_logs` times a phase.

  The ETA is the elapsed time per completed step times the steps left (steps of a phase have
  the same shape, so their cost is about the same once the first one has compiled).
  """

  def __init__(self, name: str, phase: str, total: int, num_logs: int = 10):
    self.name, self.phase, self.total = name, phase, int(total)
    self.every = max(1, self.total // max(num_logs, 1))
    self.start = time.monotonic()
    self.done = 0

  def step(self) -> None:
    """Marks one step done; logs at every `every`-th step and at the last."""
    self.done += 1
    if self.done % self.every and self.done != self.total:
      return
    elapsed = time.monotonic() - self.start
    left = elapsed / self.done * max(self.total - self.done, 0)
    logging.info('%s %s: %d/%d steps, elapsed %s, ETA %s', self.name, self.phase, self.done,
                 self.total, _duration(elapsed), _duration(left))
