"""Runs notebooks/mvp_jax_colab.ipynb end to end (smoke config, temporary workdir)."""

import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'notebooks' / 'mvp_jax_colab.ipynb'


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


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
  workdir, export_dir = tmp_path / 'run', tmp_path / 'hf'
  env = {'MVP_JAX_CONFIG_ARG': 'smoke', 'MVP_JAX_WORKDIR': str(workdir),
         'MVP_JAX_EXPORT_DIR': str(export_dir), 'MVP_JAX_SKIP_INSTALL': '1',
         'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '', 'TF_CPP_MIN_LOG_LEVEL': '2',
         # One CPU device (the tests' 8 fake devices only slow a one-process run down) and
         # quick compilation of the tiny model.
         'XLA_FLAGS': '', 'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true',
         'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(ROOT)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  cells = {tag: cell for cell in notebook.cells if cell.cell_type == 'code'
           for tag in cell.metadata.get('tags', [])}
  assert 'already installed' in _text(cells['install'])
  trained = _text(cells['train'])
  for metric in ('retrieval/t2i_R@1', 'val/mlm_accuracy', 'val/grounding_accuracy',
                 'final_step: 6'):
    assert metric in trained, trained
  assert ' -> region ' in _text(cells['ground']) and _has_image(cells['ground'])
  fill = _text(cells['fill_mask'])
  assert "-> '" in fill and 'P(match) of the true caption:' in fill
  for line in fill.splitlines():
    if ' -> ' in line:
      assert '[MASK]' not in line.split(' -> ')[1]
  assert 'image ' in _text(cells['retrieve']) and _has_image(cells['retrieve'])
  assert 'reloads identically: True' in _text(cells['export'])
  assert (export_dir / 'model.safetensors').exists() and (workdir / 'checkpoints').is_dir()
