"""What a training run directory and an exported folder hold, and where their vocabularies are.

A run directory (written by the trainer) holds `model_config.json` (the resolved ModelConfig),
`config.json` (the training ConfigDict) and `checkpoints/<step>/` (orbax). An exported folder
(`mvp_jax.export_hf`, `mvp_jax.import_authors`) holds `config.json` with an `mvp_jax` section,
`model.safetensors` in the authors' layout and the dataset's vocabularies. A dataset folder holds
one tokenizer file (`vocab.txt` or a SentencePiece `*.model`) and `id2phrase.json`.

Every path goes through `etils.epath`, so any of them may be a `gs://` (or other gfile) URI.
"""

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from etils import epath

MODEL_CONFIG_FILE = 'model_config.json'
CONFIG_FILE = 'config.json'
CHECKPOINTS_DIR = 'checkpoints'
MODEL_FILE = 'model.safetensors'
CONCEPTS_FILE = 'id2phrase.json'
# The authors ship their concept vocabulary under either name.
_CONCEPT_FILES = (CONCEPTS_FILE, 'id2phrase_new.json')


def is_run(path: str) -> bool:
  """Whether `path` is a run directory of ours (it holds model_config.json)."""
  return (epath.Path(path) / MODEL_CONFIG_FILE).is_file()


def run_and_step(path: str) -> Optional[Tuple[str, Optional[int]]]:
  """(workdir, step) of a run directory (step None = latest) or of `<workdir>/checkpoints/<n>`."""
  path = path if '://' in path else os.path.abspath(path)
  if is_run(path):
    return path, None
  parent, name = os.path.split(path)
  workdir = os.path.dirname(parent)
  if re.fullmatch(r'\d+', name) and os.path.basename(parent) == CHECKPOINTS_DIR and is_run(
      workdir):
    return workdir, int(name)
  return None


def read_json(path: str) -> Dict[str, Any]:
  try:
    return json.loads(epath.Path(path).read_text(encoding='utf-8'))
  except json.JSONDecodeError as error:
    raise ValueError(f'{path} is not valid JSON: {error}.') from error


def read_run_config(workdir: str) -> Dict[str, Any]:
  """The run's `config.json` (the training ConfigDict as JSON); {} when absent."""
  path = os.path.join(workdir, CONFIG_FILE)
  return read_json(path) if epath.Path(path).exists() else {}


def read_folder_config(directory: str) -> Dict[str, Any]:
  """The `config.json` of an exported, authors' or Hugging Face folder; {} when absent."""
  path = os.path.join(directory, CONFIG_FILE)
  return read_json(path) if epath.Path(path).exists() else {}


def has_vocabularies(directory: str) -> bool:
  return bool(directory) and epath.Path(directory).is_dir() and any(
      (epath.Path(directory) / n).exists() for n in _CONCEPT_FILES + ('vocab.txt',))


def find_dataset_dir(workdir: str, dataset_dir: Optional[str] = None) -> str:
  """The dataset folder of a run: the argument, config data.directory, or <workdir>/<kind>."""
  data = read_run_config(workdir).get('data', {})
  candidates = [dataset_dir] if dataset_dir else [
      data.get('directory'), os.path.join(workdir, data.get('kind') or 'shapesworld'),
      os.path.join(workdir, 'shapesworld')]
  for candidate in filter(None, candidates):
    if (epath.Path(candidate) / CONCEPTS_FILE).exists():
      return candidate
  raise FileNotFoundError(f'No dataset folder with {CONCEPTS_FILE} among {candidates}; pass '
                          '--dataset_dir (the folder holding vocab.txt and id2phrase.json).')


def tokenizer_file(directory: str) -> str:
  """The tokenizer file (vocab.txt or one *.model) of a dataset or exported folder."""
  names = [n for n in _names(directory) if n == 'vocab.txt' or n.endswith('.model')]
  if len(names) != 1:
    raise FileNotFoundError(f'{directory}: expected one tokenizer file (vocab.txt or *.model), '
                            f'found {names}.')
  return os.path.join(directory, names[0])


def concepts_file(directory: str) -> str:
  """The concept vocabulary file of a folder (id2phrase.json, or the authors' id2phrase_new)."""
  for name in _CONCEPT_FILES:
    if (epath.Path(directory) / name).exists():
      return os.path.join(directory, name)
  raise FileNotFoundError(f'{directory} holds no concept vocabulary ({CONCEPTS_FILE}).')


def write_json(value: Any, path: str) -> None:
  epath.Path(path).write_text(json.dumps(value, indent=1), encoding='utf-8')


def _names(directory: str) -> List[str]:
  """The sorted names in a folder."""
  return sorted(p.name for p in epath.Path(directory).iterdir())


def _concepts(directory: str) -> Optional[Dict[str, Any]]:
  try:
    path = concepts_file(directory)
  except FileNotFoundError:
    return None
  return {str(k): v for k, v in read_json(path).items()}


def _words(directory: str) -> Optional[Tuple[str, Any]]:
  """('lines', [token]) of a vocab.txt, ('model', bytes) of a SentencePiece model, or None."""
  names = [n for n in _names(directory) if n == 'vocab.txt' or n.endswith('.model')]
  if not names:
    return None
  path = epath.Path(directory) / names[0]
  if names[0] == 'vocab.txt':
    lines = path.read_text(encoding='utf-8').split('\n')
    return 'lines', lines[:-1] if lines[-1] == '' else lines
  return 'model', path.read_bytes()


def vocabulary_differences(source_dir: str, run_vocab_dir: str) -> List[str]:
  """What differs between the vocabularies of two folders (empty when they agree).

  Compares contents, not sizes: the word list (or SentencePiece model bytes) and the concept
  table {row: phrase}. A side that a folder does not carry is not compared.
  """
  problems = []
  theirs, ours = _words(source_dir), _words(run_vocab_dir)
  if theirs is not None and ours is not None and theirs != ours:
    if theirs[0] != ours[0]:
      problems.append(f'tokenizers differ in kind: the checkpoint has a {theirs[0]} tokenizer, '
                      f'the run a {ours[0]} one')
    elif theirs[0] == 'model':
      problems.append('the SentencePiece models differ')
    else:
      a, b = theirs[1], ours[1]
      first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
      seen = lambda words: repr(words[first]) if first < len(words) else '(none)'
      problems.append(f'word vocabularies differ ({len(a)} words in the checkpoint\'s, '
                      f'{len(b)} in the run\'s): id {first} is {seen(a)} in the checkpoint and '
                      f'{seen(b)} in the run')
  theirs, ours = _concepts(source_dir), _concepts(run_vocab_dir)
  if theirs is not None and ours is not None and theirs != ours:
    rows = sorted(set(theirs) | set(ours), key=lambda r: int(r) if r.isdigit() else -1)
    differing = [r for r in rows if theirs.get(r) != ours.get(r)]
    first = differing[0]
    problems.append(f'concept vocabularies differ in {len(differing)} of {len(rows)} rows: row '
                    f'{first} is {theirs.get(first)} in the checkpoint and {ours.get(first)} in '
                    'the run')
  return problems
