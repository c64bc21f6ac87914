r"""Re-executes notebooks/mvp_jax_colab.ipynb and saves it with its outputs (pictures included),
so that GitHub shows a real run without anyone running it.

  python -m notebooks.regenerate                 # the full quickstart (about 10 min on 2 cores)
  python -m notebooks.regenerate --config_arg=smoke --out=/tmp/nb.ipynb   # seconds, elsewhere

Runs from the repository root in a fresh workdir. Saved: every cell's stdout, results and
pictures; stderr (absl / TensorFlow logs, progress bars) is dropped. `REPO_URL` in the first cell
becomes the checkout's `origin` remote (https form) unless --repo_url is given; without either
it stays ''.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

from absl import flags

from input_pipeline import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'mvp_jax_colab.ipynb'


def _define(values: flags.FlagValues) -> None:
  flags.DEFINE_string('config_arg', '', "Switch of configs/mvp_tiny.py: '' = the quickstart, "
                      "'smoke' = a seconds-long run.", flag_values=values)
  flags.DEFINE_string('out', str(NOTEBOOK), 'Where to write the executed notebook (default: '
                      'over the committed one).', flag_values=values)
  flags.DEFINE_string('repo_url', None, "Git URL written into the notebook's REPO_URL "
                      "(default: the checkout's origin remote, else '').", flag_values=values)
  flags.DEFINE_string('workdir', None, 'Workdir of the run (default: a fresh temporary folder; '
                      'an existing run there is resumed).', flag_values=values)
  flags.DEFINE_integer('timeout', 3600, 'Seconds a single cell may run.', flag_values=values)


def origin_url() -> str:
  """The checkout's `origin` remote as an https URL, or '' when it has none."""
  result = subprocess.run(['git', '-C', str(ROOT), 'remote', 'get-url', 'origin'],
                          capture_output=True, text=True, check=False)
  url = result.stdout.strip() if result.returncode == 0 else ''
  match = re.fullmatch(r'git@([^:]+):(.+?)(\.git)?', url)
  return f'https://{match.group(1)}/{match.group(2)}' if match else url


def set_repo_url(notebook, url: str) -> None:
  """Writes `REPO_URL = '<url>'` into the parameters cell."""
  cell = next(c for c in notebook.cells if 'parameters' in c.metadata.get('tags', []))
  cell.source, count = re.subn(r"^REPO_URL = .*$", f'REPO_URL = {url!r}', cell.source,
                               flags=re.M)
  if count != 1:
    raise ValueError(f'{NOTEBOOK}: the parameters cell has no single REPO_URL line.')


def strip_logs(notebook) -> None:
  """Drops stderr streams (logs, progress bars) and per-run timing metadata."""
  for cell in notebook.cells:
    if cell.cell_type != 'code':
      continue
    cell.outputs = [o for o in cell.outputs
                    if not (o.output_type == 'stream' and o.name == 'stderr')]
    cell.metadata.pop('execution', None)


def regenerate(out: str, config_arg: str = '', repo_url: Optional[str] = None,
               timeout: int = 3600, workdir: Optional[str] = None) -> str:
  """Executes the notebook (run in WORKDIR/run, export in WORKDIR/hf; default WORKDIR: a fresh
  temporary folder) and writes it with its outputs to `out`."""
  import nbclient  # pylint: disable=import-outside-toplevel
  import nbformat  # pylint: disable=import-outside-toplevel
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  set_repo_url(notebook, origin_url() if repo_url is None else repo_url)
  workdir = workdir or tempfile.mkdtemp(prefix='mvp_tiny_notebook_')
  env = {'MVP_JAX_CONFIG_ARG': config_arg, 'MVP_JAX_WORKDIR': os.path.join(workdir, 'run'),
         'MVP_JAX_EXPORT_DIR': os.path.join(workdir, 'hf'), 'TF_CPP_MIN_LOG_LEVEL': '2',
         'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits this process's environment
  try:
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name='python3',
                            resources={'metadata': {'path': str(ROOT)}}).execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  strip_logs(notebook)
  nbformat.write(notebook, out)
  return out


def _run(values: flags.FlagValues) -> int:
  print(regenerate(values.out, values.config_arg, values.repo_url, values.timeout,
                   values.workdir))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m notebooks.regenerate', argv, _define, _run, what='regeneration')


if __name__ == '__main__':
  sys.exit(main())
