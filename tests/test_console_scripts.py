"""Console scripts of setup.py (issue 16 item 5): each exists, and `--help` exits 0 and explains
every flag.

The in-process test calls each entry point's own function with `--help` (cheap: the modules are
the ones the suite imports anyway). The installed test checks every console script exists and
runs one of each kind of main as a subprocess; it needs mvp-jax installed from this checkout (`pip install -e .`, what .ci/run
does) and says so when another copy is installed.
"""

import ast
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT

# Flags each command must list in its --help (a few of each, the ones a user needs first).
EXPECTED_FLAGS = {
    'mvp-train': ['config', 'workdir'],
    'mvp-extract': ['images', 'coco_json', 'checkpoint', 'out', 'split', 'regions'],
    'mvp-sources': ['source', 'manual_dir', 'shards', 'features', 'data_dir', 'beam'],
    'mvp-import-vinvl': ['features', 'predictions', 'captions', 'out_dir', 'split'],
    'mvp-import-vqa': ['questions', 'annotations', 'images', 'out_dir', 'split'],
    'mvp-import-snli-ve': ['jsonl', 'images', 'out_dir', 'split'],
    'mvp-import-refcoco': ['refs', 'instances', 'ref_split', 'images', 'out_dir'],
    'mvp-import-custom': ['task', 'train', 'image_root', 'out_dir'],
    'mvp-import-authors': ['checkpoint', 'out', 'img_layernorm'],
    'mvp-export': ['workdir', 'out', 'push_to_hub', 'step'],
    'mvp-predict': ['workdir', 'exported', 'text', 'task', 'image'],
    'mvp-shapesworld': ['out_dir'],
    'mvp-phrases': ['text', 'input', 'evaluate'],
    'mvp-train-vocab': ['corpus', 'kind', 'vocab_size', 'out'],
}
SUBPROCESS_CHECKED = ('mvp-train', 'mvp-export', 'mvp-sources', 'mvp-phrases')
_FLAG_LINE = re.compile(r'^  --(?:\[no\])?([A-Za-z_][\w.]*): ?(.*)$')
_NOTES = re.compile(r"\((?:default: '.*'|an integer|a number|a comma separated list|"
                    r"a non-negative integer|a positive integer|"
                    r"repeat this option to specify a list of values)\)")


def console_scripts() -> dict:
  """setup.py's CONSOLE_SCRIPTS table, read without running setup.py."""
  tree = ast.parse((pathlib.Path(ROOT) / 'setup.py').read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and node.targets[0].id == 'CONSOLE_SCRIPTS':
      return ast.literal_eval(node.value)
  raise AssertionError('setup.py has no CONSOLE_SCRIPTS table')


def flag_helps(text: str) -> dict:
  """--help text -> {flag name: its explanation without absl's default/type notes}."""
  helps, name = {}, None
  for line in text.splitlines():
    match = _FLAG_LINE.match(line)
    if match:
      name = match.group(1)
      helps[name] = match.group(2)
    elif name and line.startswith('    '):
      if not _NOTES.fullmatch(line.strip()):  # absl's own "(default: ...)" / type lines
        helps[name] += ' ' + line.strip()
    else:
      name = None
  return {n: re.sub(r'^<[^>]*>: ', '', h).strip() for n, h in helps.items()}


def check_help(script: str, text: str) -> None:
  helps = flag_helps(text)
  missing = [f for f in EXPECTED_FLAGS[script] if f not in helps]
  assert not missing, f'{script} --help lacks {missing}:\n{text}'
  terse = {n: h for n, h in helps.items() if len(h.split()) < 3}
  assert not terse, f'{script}: flags without a real explanation: {terse}'


def test_setup_declares_a_console_script_for_every_command_the_readme_names():
  assert set(console_scripts()) == set(EXPECTED_FLAGS)


@pytest.mark.parametrize('script', sorted(EXPECTED_FLAGS))
def test_help_exits_zero_and_explains_every_flag(script, monkeypatch, capsys):
  module_name, function = console_scripts()[script].split(':')
  entry = getattr(importlib.import_module(module_name), function)
  monkeypatch.setattr(sys, 'argv', [os.path.join('/venv/bin', script), '--help'])
  try:
    status = entry()
  except SystemExit as e:
    status = e.code
  assert status in (0, None)
  text = capsys.readouterr().out
  assert f'USAGE: {script} ' in text
  check_help(script, text)


def _installed_here() -> bool:
  """Whether the installed mvp-jax is this checkout: outside the checkout (no cwd on sys.path),
  `import mvp_jax` must resolve here, whether pip installed it through PEP 660 or `setup.py
  develop` (which writes no direct_url.json)."""
  try:
    importlib.metadata.distribution('mvp-jax')
  except importlib.metadata.PackageNotFoundError:
    return False
  found = subprocess.run([sys.executable, '-c', 'import mvp_jax; print(mvp_jax.__file__)'],
                         cwd=tempfile.gettempdir(), capture_output=True, text=True, check=False)
  if found.returncode:
    return False
  return pathlib.Path(found.stdout.strip()).resolve().is_relative_to(pathlib.Path(ROOT).resolve())


def test_installed_console_scripts_run_as_subprocesses():
  if not _installed_here():
    pytest.skip('mvp-jax with console scripts is not installed from this checkout '
                '(run `pip install -e .` here, as .ci/run does)')
  declared = {e.name: e.value for e in importlib.metadata.distribution('mvp-jax').entry_points
              if e.group == 'console_scripts'}
  assert declared == console_scripts()
  bin_dir = pathlib.Path(sys.executable).parent
  paths = {script: bin_dir / script for script in declared}
  assert all(p.exists() for p in paths.values()), [s for s, p in paths.items() if not p.exists()]
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'JAX_PLATFORMS': 'cpu'}
  # Every launcher is the same pip-generated file; run one of each kind of main (the in-process
  # test covers every command's --help): absl app.run outside / inside a package, a FlagValues
  # main with subcommands, a cli.run main. These import no TensorFlow, so it stays fast.
  running = {s: subprocess.Popen([str(paths[s]), '--help'], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for s in SUBPROCESS_CHECKED}
  for script, process in running.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f'{script} --help: {err[-2000:]}'
    assert f'USAGE: {script} ' in out
    check_help(script, out)
