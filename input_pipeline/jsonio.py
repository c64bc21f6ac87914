"""JSON files of the input pipeline: one atomic writer, one strict reader.

`write_json_atomically` writes to a temporary file beside the target and renames it into place,
so a reader never sees a half-written file. `read_json` refuses what `json.load` would let pass
silently: an object with a repeated key (the last value would win, e.g. a caption file whose
image appears twice keeps only the last captions) is an error naming the key.
"""

import json
import os
import pickle
import uuid
from typing import Any, Type


class DuplicateKeyError(ValueError):
  """A JSON object holds the same key twice."""


def _refuse_duplicates(pairs: list) -> dict:
  keys = [k for k, _ in pairs]
  if len(set(keys)) != len(keys):
    seen, repeated = set(), []
    for k in keys:
      if k in seen:
        repeated.append(k)
      seen.add(k)
    raise DuplicateKeyError(f'repeated key(s) {repeated[:5]} in one JSON object (json.load '
                            'would keep only the last value)')
  return dict(pairs)


def loads(text: str | bytes) -> Any:
  """`json.loads` that refuses repeated keys (DuplicateKeyError)."""
  return json.loads(text, object_pairs_hook=_refuse_duplicates)


def read_json(path: str, error: Type[Exception] = ValueError, what: str = '') -> Any:
  """The JSON value of `path`; invalid JSON or a repeated key raises `error` naming the file."""
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      return json.load(f, object_pairs_hook=_refuse_duplicates)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise error(f'{path}: {what + " " if what else ""}not valid JSON ({e})') from None
  except DuplicateKeyError as e:
    raise error(f'{path}: {what + ": " if what else ""}{e}') from None


def write_json_atomically(value: Any, path: str, *, indent: int = 1,
                          sort_keys: bool = False) -> None:
  """Writes `value` as JSON to `path` through a temporary file and a rename."""
  path = os.fspath(path)
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=indent, sort_keys=sort_keys)
  os.replace(tmp, path)


def load_container(path: str, error: Type[Exception] = ValueError) -> Any:
  """The Python object stored in a .json, .pkl/.pickle or .pt file.

  `.pt` files are read with `torch.load(weights_only=True)` (tensors and plain containers only);
  torch is imported only here, when such a file is read. Pickle runs code from the file: load
  trusted files only.
  """
  path = os.fspath(path)
  extension = os.path.splitext(path)[1].lower()
  if extension == '.pt':
    try:
      import torch  # pylint: disable=import-outside-toplevel  (only for .pt files)
    except ImportError as e:
      raise error(f'{path}: reading a .pt file needs torch, which is not installed; install it '
                  'or convert the file to JSON or pickle once elsewhere') from e
    try:
      return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds)
      raise error(f'{path}: not a readable torch file ({type(e).__name__}: {e})') from None
  if extension in ('.pkl', '.pickle'):
    with open(path, 'rb') as f:
      return pickle.load(f)
  return read_json(path, error)
