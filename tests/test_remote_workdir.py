"""A pre-training and a fine-tuning smoke run whose workdirs are `gs://` URLs, served by a fake
GCS server on 127.0.0.1 (tests/fake_gcs.py), with every file the runs write found in the bucket
and nothing written to the local disk but the datasets.

All three writers of a run go to the bucket, each through its own GCS client: our code and
orbax's metadata through `etils.epath` (its TensorFlow backend, `tf.io.gfile`), clu's TensorBoard
writer through `tf.summary` (both TF's C++ GCS filesystem, which reaches the fake server as an
HTTPS proxy), and orbax's arrays through tensorstore's `gcs` driver (`TENSORSTORE_GCS_HTTP_URL`).
orbax also asks google-cloud-storage whether the bucket has a hierarchical namespace whenever it
lists checkpoint steps (`STORAGE_EMULATOR_HOST`). The runs go in a subprocess
(tests/remote_workdir_worker.py) because these clients read their environment once, with its
working directory and TMPDIR fresh empty folders. Datasets (ArrayRecord) stay local: the
documented exception. The fake server records which client wrote each object, so the test also
checks that each file came through the client meant to write it (a writer that fell back to
the local disk, or to another client, fails it). About 100 s on the shared 2-core machine, so
it runs in CI's `-m slow` step.
"""

import json
import os
import subprocess
import sys

import pytest

from configs import mvp_tiny
from mvp_jax import checkpointing
from mvp_jax import train

import fake_gcs  # pylint: disable=g-bad-import-order
from conftest import ROOT  # pylint: disable=g-bad-import-order
import test_finetune  # pylint: disable=g-bad-import-order

BUCKET = 'test-bucket'
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'remote_workdir_worker.py')


def local_files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


@pytest.mark.slow
def test_pretrain_and_fine_tune_on_gcs_write_nothing_locally(tmp_path):
  config = mvp_tiny.get_config('smoke')
  config.data.directory = str(tmp_path / 'data' / 'pretrain')
  dataset = train.data.prepare_dataset(config.data, str(tmp_path / 'data'))
  task_dataset = str(tmp_path / 'data' / 'retrieval')
  tune = test_finetune.smoke_config('retrieval', '', task_dataset)
  tune.data.pretraining_dir = dataset
  train.data.prepare_dataset(tune.data, '', task='retrieval')
  data_before = local_files(tmp_path / 'data')
  cwd, tmp = tmp_path / 'cwd', tmp_path / 'tmp'
  cwd.mkdir()
  tmp.mkdir()

  with fake_gcs.Server((BUCKET,)) as server:
    env = dict(os.environ, **server.environment(), TMPDIR=str(tmp))
    done = subprocess.run([sys.executable, WORKER, dataset, task_dataset, f'gs://{BUCKET}/runs'],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-6000:]
  assert not server.unhandled, server.unhandled
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out['module'].startswith(str(ROOT)), out['module']  # this checkout's mvp_jax
  assert out['pretrain']['final_step'] == 2 and out['tuned']['final_step'] == 2
  assert 0.0 <= out['tuned']['val/retrieval/t2i_R@1'] <= 1.0
  assert out['steps'] == {'pretrain': 2, 'tuned': 2}  # load_trained read both back from gs://
  (report,) = out['init_from']  # the fine-tune's init_from read the gs:// pre-training run
  assert report['source'] == f'gs://{BUCKET}/runs/pretrain' and report['kind'] == 'run'
  assert report['loaded'] > 0

  # In the bucket: every file of both runs, each written by the client meant to write it.
  blobs = {name: blob for (bucket, name), blob in server.objects.items() if bucket == BUCKET}
  assert all(name.startswith('runs/') for name in blobs), sorted(blobs)
  for run in ('pretrain', 'tuned'):
    files = {n[len(f'runs/{run}/'):]: b for n, b in blobs.items() if n.startswith(f'runs/{run}/')}
    for name in (checkpointing.CONFIG_FILE, checkpointing.MODEL_CONFIG_FILE, train.METRICS_FILE):
      assert files[name].writer == 'TSL', (run, name)  # tf.io.gfile, through etils.epath
    events = [n for n in files if n.startswith('events.out.tfevents')]
    assert events and all(files[n].writer == 'TSL' for n in events), (run, sorted(files))  # clu
    steps = sorted({n.split('/')[1] for n in files if n.startswith('checkpoints/')} - {''})
    assert steps[-1] == '2' and (run != 'pretrain' or steps == ['2']), (run, steps)
    for step in steps:
      in_step = {n[len(f'checkpoints/{step}/'):]: b for n, b in files.items()
                 if n.startswith(f'checkpoints/{step}/')}
      for name in ('_CHECKPOINT_METADATA', 'commit_success.txt', 'data/metadata',
                   'state/_METADATA'):
        assert in_step[name].writer == 'TSL', (run, step, name)  # orbax's metadata: epath
      arrays = [n for n in in_step if n.startswith('state/ocdbt.process_0/d/')]
      assert arrays and 'state/manifest.ocdbt' in in_step, (run, step, sorted(in_step))
      assert all(in_step[n].writer == 'tensorstore' for n in arrays + ['state/manifest.ocdbt'])
    logged = [json.loads(line)['step'] for line in files[train.METRICS_FILE].data.splitlines()]
    assert logged[-1] == 2 and (run != 'pretrain' or logged == [1, 2]), (run, logged)
  picture = blobs['runs/pretrain/grounding.png']
  assert picture.data.startswith(b'\x89PNG') and picture.writer == 'TSL'
  tuned_loss = out['read_metrics']['train/loss']  # [step, value] from the gs:// event file
  assert tuned_loss == [2, pytest.approx(out['tuned']['train/loss'], rel=1e-6)]
  # orbax listed the steps (asking google-cloud-storage about the bucket) and deleted step 1 of
  # the pre-training run (keep_checkpoints=1) on GCS.
  assert any(client == 'gcloud-python' for _, _, _, client in server.requests)
  assert any(method == 'DELETE' and 'pretrain%2Fcheckpoints%2F1%2F' in path
             for method, _, path, _ in server.requests)

  # Locally: the datasets unchanged, the working directory and TMPDIR empty (TF stages GCS
  # uploads in TMPDIR and removes them), and no `gs:` folder anywhere.
  assert local_files(tmp_path / 'data') == data_before
  assert sorted(os.listdir(tmp_path)) == ['cwd', 'data', 'tmp']
  assert not os.listdir(cwd) and not os.listdir(tmp)
  for directory, names, files in os.walk(tmp_path):
    assert not any(n.startswith('gs:') for n in names + files), directory
