"""notebooks/mvp_jax_colab.ipynb: executed end to end by `python -m notebooks.regenerate` with the
smoke config, and the committed copy carries the saved outputs of a full quickstart run."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
pytest.importorskip('nbclient')

from configs import mvp_tiny  # pylint: disable=g-import-not-at-top,wrong-import-position
from notebooks import regenerate  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _text(cell) -> str:
  """Stdout and text/plain outputs of a cell."""
  parts = []
  for output in cell.outputs:
    if output.output_type == 'stream' and output.name == 'stdout':
      parts.append(output.text)
    elif output.output_type in ('execute_result', 'display_data'):
      parts.append(output.get('data', {}).get('text/plain', ''))
  return ''.join(parts)


def _has_image(cell) -> bool:
  return any(output.output_type == 'display_data' and 'image/png' in output.get('data', {})
             for output in cell.outputs)


def _cells(notebook) -> dict:
  return {tag: cell for cell in notebook.cells if cell.cell_type == 'code'
          for tag in cell.metadata.get('tags', [])}


def _check_outputs(cells, final_step: int) -> None:
  trained = _text(cells['train'])
  for metric in ('retrieval/t2i_R@1', 'retrieval/i2t_R@1', 'val/mlm_accuracy',
                 'val/grounding_accuracy', f'final_step: {final_step}\n'):
    assert metric in trained, trained
  assert 'grounding.png' in _text(cells['picture']) and _has_image(cells['picture'])
  assert ' -> region ' in _text(cells['ground']) and _has_image(cells['ground'])
  fill = _text(cells['fill_mask'])
  assert "-> '" in fill and 'P(match) of the true caption:' in fill
  for line in fill.splitlines():
    if ' -> ' in line:
      assert '[MASK]' not in line.split(' -> ')[1]
  assert 'image ' in _text(cells['retrieve']) and _has_image(cells['retrieve'])
  assert 'reloads identically: True' in _text(cells['export'])


@pytest.mark.slow  # the whole notebook in a kernel
def test_notebook_runs_end_to_end_through_the_regenerate_command(tmp_path, monkeypatch):
  env = {'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '',
         # One CPU device (the tests' 8 fake devices only slow a one-process run down) and
         # quick compilation of the tiny model.
         'XLA_FLAGS': '', 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'}
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  out = tmp_path / 'executed.ipynb'
  regenerate.regenerate(str(out), config_arg='smoke', repo_url='', timeout=900,
                        workdir=str(tmp_path / 'w'))  # raises on the first failing cell
  notebook = nbformat.read(out, as_version=4)
  cells = _cells(notebook)
  assert 'already installed' in _text(cells['install'])
  _check_outputs(cells, mvp_tiny.get_config('smoke').total_steps)
  assert (tmp_path / 'w' / 'hf' / 'model.safetensors').exists()
  assert (tmp_path / 'w' / 'run' / 'checkpoints').is_dir()
  assert not any(o.output_type == 'stream' and o.name == 'stderr'
                 for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)


def test_committed_notebook_has_the_saved_outputs_of_the_quickstart():
  notebook = nbformat.read(regenerate.NOTEBOOK, as_version=4)
  cells = _cells(notebook)
  if not any(c.outputs for c in cells.values()):
    pytest.skip('notebooks/mvp_jax_colab.ipynb is saved without outputs: run '
                '`python -m notebooks.regenerate` (the full quickstart) and commit it')
  assert all(c.outputs for c in cells.values()), [t for t, c in cells.items() if not c.outputs]
  # Saved by `python -m notebooks.regenerate` from the full quickstart config: rerun it when
  # configs/mvp_tiny.py changes.
  _check_outputs(cells, mvp_tiny.get_config('').total_steps)
  assert not any(o.output_type == 'stream' and o.name == 'stderr'
                 for c in notebook.cells if c.cell_type == 'code' for o in c.outputs)


def test_repo_url_is_written_into_the_parameters_cell():
  notebook = nbformat.read(regenerate.NOTEBOOK, as_version=4)
  regenerate.set_repo_url(notebook, 'https://example.org/x/mvp-jax')
  assert "REPO_URL = 'https://example.org/x/mvp-jax'" in _cells(notebook)['parameters'].source


def _install_helpers() -> dict:
  """The functions the install cell defines (its source up to the install itself)."""
  notebook = nbformat.read(regenerate.NOTEBOOK, as_version=4)
  source = _cells(notebook)['install'].source
  namespace = {'os': os}  # imported by the parameters cell
  exec(source[:source.index("if importlib.util.find_spec('mvp_jax')")], namespace)  # pylint: disable=exec-used
  return namespace


@pytest.mark.parametrize('protobuf, bounded', [('5.29.6', True), ('6.30.2', True),
                                               ('6.31.1', False), ('7.34.0', False)])
def test_install_cell_keeps_the_runtime_and_a_metadata_that_runs_on_its_protobuf(
    protobuf, bounded, monkeypatch):
  helpers = _install_helpers()
  installed = {'jax': '0.7.2', 'jaxlib': '0.7.2', 'tensorflow': '2.19.0', 'numpy': '2.0.2',
               'protobuf': protobuf}

  def version(name):
    if name not in installed:
      raise helpers['importlib'].metadata.PackageNotFoundError(name)
    return installed[name]

  monkeypatch.setattr(helpers['importlib'].metadata, 'version', version)
  path, pins = helpers['keep_preinstalled']()
  expected = [f'{name}=={v}' for name, v in installed.items()]
  expected += ['tensorflow-metadata<1.18'] if bounded else []
  assert pins == expected
  assert pathlib.Path(path).read_text().split() == expected
