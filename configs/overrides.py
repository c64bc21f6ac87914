"""Clear messages for the two config mistakes of a command line (used by `main.py`).

Not a runnable config. `--config=configs/x.py:smok` (a switch the config does not have) and
`--config.model.hidden=64` (a field it does not have) make ml_collections raise a bare
ValueError / AttributeError while flags are parsed; `explain` names the switch or field and the
valid ones.
"""

import importlib.util
import os
from typing import Any, Optional, Sequence


def unknown_field(config: Any, dotted: str) -> Optional[str]:
  """None if `dotted` ('model.hidden_size') names a field of `config`, else a message naming the
  first missing part and the fields valid at that level."""
  node, parents = config, []
  for part in dotted.split('.'):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if part not in keys:
      where = '.'.join(parents) or 'the config'
      return (f'--config.{dotted}: {where} has no field {part!r}; valid fields there: '
              f'{sorted(keys)}.')
    node, parents = node[part], parents + [part]
  return None


def _load(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_config_being_checked', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def explain(argv: Sequence[str]) -> Optional[str]:
  """The message for a config error of `argv`: the unknown switch (the config's own
  ValueError) or the unknown field of a `--config.<field>=` override; None if neither."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None or not os.path.exists(spec.partition(':')[0]):
    return None
  try:
    config = _load(spec)
  except ValueError as e:  # e.g. an unknown `:switch`
    return str(e)
  for arg in argv:
    if arg.startswith('--config.'):
      message = unknown_field(config, arg[len('--config.'):].split('=', 1)[0])
      if message:
        return message
  return None
