"""The runs of tests/test_remote_workdir.py, in a fresh process whose environment points every
GCS client at the test's fake server (TF, tensorstore and google-cloud-storage read it once).

Usage: python remote_workdir_worker.py PRETRAIN_DATA TASK_DATA gs://BUCKET/ROOT

Pre-trains 2 steps (a checkpoint each step, keep 1, so orbax also deletes step 1 on GCS) into
ROOT/pretrain, fine-tunes retrieval 2 steps from it (init_from=ROOT/pretrain) into ROOT/tuned,
reads both checkpoints back, writes the quickstart's picture into ROOT/pretrain and reads the
fine-tune's TensorBoard scalars back (`export_hf.read_metrics`), and prints one JSON line: the
results, the checkpoint steps read back, what the fine-tune's init_from loaded, and those
scalars.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax_processes  # pylint: disable=g-import-not-at-top,g-bad-import-order
import mvp_jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
from mvp_jax import export_hf  # pylint: disable=g-import-not-at-top
from mvp_jax import quickstart  # pylint: disable=g-import-not-at-top
from mvp_jax import train  # pylint: disable=g-import-not-at-top
import test_finetune  # pylint: disable=g-import-not-at-top,g-bad-import-order
import test_train  # pylint: disable=g-import-not-at-top,g-bad-import-order


def main(pretrain_data: str, task_data: str, root: str) -> None:
  jax_processes.start(0, 1, '')
  reports = []
  init_from = train.weights.init_from

  def recorded(*args, **kwargs):
    params, report = init_from(*args, **kwargs)
    reports.append({'source': report.source, 'kind': report.source_kind,
                    'loaded': len(report.loaded)})
    return params, report

  train.weights.init_from = recorded
  pretrain = test_train.smoke_config(pretrain_data, total_steps=2, log_every=1,
                                     checkpoint_every=1, keep_checkpoints=1)
  results = train.train_and_evaluate(pretrain, f'{root}/pretrain')
  tune = test_finetune.smoke_config('retrieval', f'{root}/pretrain', task_data)
  tune.data.pretraining_dir = pretrain_data
  tuned = train.train_and_evaluate(tune, f'{root}/tuned')
  steps = {run: checkpointing.load_trained(f'{root}/{run}')[2] for run in ('pretrain', 'tuned')}
  # What the quickstart and the Hub export do with a finished run: its picture, its metrics.
  quickstart.write_picture(f'{root}/pretrain', np.zeros((4, 4, 3), np.uint8), 2)
  metrics = export_hf.read_metrics(f'{root}/tuned')
  print(json.dumps({'module': mvp_jax.__file__, 'pretrain': results, 'tuned': tuned,
                    'steps': steps, 'init_from': reports, 'read_metrics': metrics}), flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
