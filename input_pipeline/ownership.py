"""Which builder owns a dataset folder; a builder never writes into a folder that is not its own.

Every builder (ShapesWorld, the VinVL import, the task importers, the custom builder) `claim`s
its output folder before writing anything: a missing or empty folder becomes its own (an owner
file is written first), a folder it already owns is reused, anything else is refused with what
the folder holds. Folders written before owner files existed are recognised by their own
markers (shapesworld_build.json, shapesworld_tasks.json, task.json, metadata.json's
"source").
"""

import os
from typing import Optional

from input_pipeline import jsonio

OWNER_FILE = 'mvp_owner.json'
SHAPESWORLD_BUILD_FILE = 'shapesworld_build.json'
SHAPESWORLD_TASKS_FILE = 'shapesworld_tasks.json'


class NotOwnedError(FileExistsError):
  """A builder was pointed at a folder that another builder (or the user) filled."""


def owner(directory: str) -> Optional[str]:
  """The builder that wrote `directory`, or None when it is missing, empty or foreign."""
  path = os.path.join(directory, OWNER_FILE)
  if os.path.exists(path):
    value = jsonio.read_json(path, NotOwnedError, 'owner file')
    return value.get('builder') if isinstance(value, dict) else None
  if os.path.exists(os.path.join(directory, SHAPESWORLD_BUILD_FILE)):
    return 'shapesworld'
  if os.path.exists(os.path.join(directory, SHAPESWORLD_TASKS_FILE)):
    return 'shapesworld_tasks'
  if os.path.exists(os.path.join(directory, 'task.json')):
    return 'task'
  metadata = os.path.join(directory, 'metadata.json')
  if os.path.exists(metadata):
    source = jsonio.read_json(metadata, NotOwnedError, 'metadata').get('source')
    return str(source) if source else None
  return None


def claim(directory: str, builder: str) -> None:
  """Makes `directory` the output of `builder`, or raises NotOwnedError before writing anything."""
  entries = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise NotOwnedError(f'{directory}: is a file, not a dataset folder.')
  current = owner(directory) if entries else None
  if entries and current != builder:
    what = f'a dataset written by {current!r}' if current else 'files of no mvp-jax builder'
    raise NotOwnedError(
        f'{directory}: holds {what} ({", ".join(entries[:6])}{", ..." if len(entries) > 6 else ""})'
        f'; the {builder!r} builder writes only into a new or empty folder or one it wrote '
        'itself. Nothing was changed: point it at another folder.')
  os.makedirs(directory, exist_ok=True)
  if not os.path.exists(os.path.join(directory, OWNER_FILE)):
    jsonio.write_json_atomically({'builder': builder}, os.path.join(directory, OWNER_FILE))
