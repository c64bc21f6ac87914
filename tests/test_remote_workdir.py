"""A pre-training and a fine-tuning smoke run whose workdirs are on a non-local filesystem,
TensorFlow's in-memory `ram://`, with nothing written to the local disk.

Why `ram://`: the run's files are written by three libraries, and `ram://` is the one non-local
scheme that two of them take here: TensorFlow (`tf.io.gfile`: clu's TensorBoard writer, tf.data)
has it built in, and `etils.epath` (our code, orbax's metadata) reaches it through its
TensorFlow backend once the scheme is registered (epath only knows gs/s3/az/hf: `ram_scheme`
adds it the way gs:// is declared). An fsspec `memory://` filesystem would reach epath but not
TensorFlow. The third, orbax, stores arrays with tensorstore, which has no gfile driver: for
any path but `gs://` it uses its local-file driver and refuses non-absolute paths. So orbax's
checkpoint folders are mapped to a local temporary folder (`local_orbax`), the one place the
runs may write locally, and the test checks that nothing else lands there or anywhere local.
"""

import os

import pytest
import tensorflow as tf
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from etils.epath import register as epath_register
import orbax.checkpoint as ocp

from configs import mvp_tiny
from mvp_jax import checkpointing
from mvp_jax import train

import test_finetune  # pylint: disable=g-bad-import-order
import test_train  # pylint: disable=g-bad-import-order


@pytest.fixture
def ram_scheme(monkeypatch):
  """`ram://` in epath, served by its TensorFlow backend, as epath declares gs://."""
  monkeypatch.setattr(gpath, '_URI_PREFIXES', gpath._URI_PREFIXES + ('ram://',))
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {'ram'})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, 'ram://', '/ram/')
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'ram', epath_backend.tf_backend)
  monkeypatch.setitem(epath_register._URI_PREFIXES_TO_CLS, 'ram://', gpath.PosixGPath)
  yield
  if tf.io.gfile.exists('ram://runs'):
    tf.io.gfile.rmtree('ram://runs')


def local_orbax(monkeypatch, root):
  """orbax's CheckpointManager keeps `ram://X` checkpoints in `root/X` (see the module doc)."""
  manager = ocp.CheckpointManager

  def mapped(directory, *args, **kwargs):
    directory = os.fspath(directory)
    assert directory.startswith('ram://'), directory
    return manager(os.path.join(root, directory[len('ram://'):]), *args, **kwargs)

  monkeypatch.setattr(ocp, 'CheckpointManager', mapped)


def ram_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in tf.io.gfile.walk(root) for f in files)


def local_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def test_pretrain_and_fine_tune_on_ram_write_nothing_locally(ram_scheme, tmp_path, monkeypatch):
  del ram_scheme
  config = mvp_tiny.get_config('smoke')
  config.data.directory = str(tmp_path / 'data' / 'pretrain')
  dataset = train.data.prepare_dataset(config.data, str(tmp_path / 'data'))
  task_dataset = str(tmp_path / 'data' / 'retrieval')
  tune = test_finetune.smoke_config('retrieval', 'ram://runs/pretrain', task_dataset)
  tune.data.pretraining_dir = dataset
  train.data.prepare_dataset(tune.data, '', task='retrieval')
  data_before = local_files(tmp_path / 'data')
  cwd, orbax_root = tmp_path / 'cwd', tmp_path / 'orbax'
  cwd.mkdir()
  orbax_root.mkdir()
  monkeypatch.chdir(cwd)
  local_orbax(monkeypatch, str(orbax_root))

  results = train.train_and_evaluate(test_train.smoke_config(dataset, total_steps=2, log_every=1),
                                     'ram://runs/pretrain')
  assert results['final_step'] == 2
  tuned = train.train_and_evaluate(tune, 'ram://runs/tuned')
  assert tuned['final_step'] == 2 and 0.0 <= tuned['val/retrieval/t2i_R@1'] <= 1.0

  for run in ('pretrain', 'tuned'):
    files = ram_files(f'ram://runs/{run}')
    for name in (checkpointing.CONFIG_FILE, checkpointing.MODEL_CONFIG_FILE,
                 train.METRICS_FILE):
      assert name in files, (run, files)
    assert any(f.startswith('events.out.tfevents') for f in files), (run, files)
    assert epath.Path(f'ram://runs/{run}/{train.METRICS_FILE}').read_text().count('\n') >= 2
  # Locally: the cwd stays empty, the datasets unchanged, no `ram:` folder anywhere, and the
  # orbax folder holds checkpoint steps only.
  assert not os.listdir(cwd)
  assert local_files(tmp_path / 'data') == data_before
  for directory, names, files in os.walk(tmp_path):
    assert not any(n.startswith('ram:') for n in names + files), directory
  assert sorted(os.listdir(orbax_root / 'runs')) == ['pretrain', 'tuned']
  for run in ('pretrain', 'tuned'):
    assert os.listdir(orbax_root / 'runs' / run) == [checkpointing.CHECKPOINTS]
    assert checkpointing.load_trained(f'ram://runs/{run}')[2] == 2
