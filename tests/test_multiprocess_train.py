"""The trainer in 2 real JAX processes (4 CPU devices each, gloo collectives) against 1 process
with 8 devices: pre-training steps, per-host input shards, evaluation, an orbax save, a SIGTERM
to one process (a coordinated stop of both at the same step) and a bit-identical resume, and a
fine-tuning run from the 2-process pre-training run.

Slow (each launch imports TensorFlow and compiles the step in every process): marked
`multiprocess`, deselected by default; run with `python -m pytest -q -m multiprocess tests`.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mvp_jax import checkpointing

from test_train import shapesworld_dir  # pylint: disable=unused-import,g-bad-import-order

pytestmark = pytest.mark.slow
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multiprocess_train_worker.py')
# 2 processes x 4 devices vs 1 x 8: the same global batches, so the same losses and updates up
# to the order of the float reductions (gloo's all-reduce vs one process's).
ATOL, RTOL = 1e-5, 1e-4


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(runs, tmp_path, name):
  """Starts every (num_processes, spec) of `runs` at once (a run of 2 is 2 processes on one
  port); waits; returns per run the list of (results, example_index rows) of its processes."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs, outs = [], []
  for r, (num, spec) in enumerate(runs):
    spec = dict(spec, out=str(tmp_path / f'{name}{r}_'))
    path = tmp_path / f'{name}{r}.json'
    path.write_text(json.dumps(spec))
    port = str(_free_port())
    for i in range(num):
      with open(f'{spec["out"]}{i}.log', 'w', encoding='utf-8') as log:
        procs.append(subprocess.Popen([sys.executable, WORKER, str(i), str(num), port, str(path)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    outs.append([spec['out'] + str(i) for i in range(num)])
  try:
    for proc in procs:
      proc.wait(timeout=1800)
    failed = [o for o, proc in zip([o for run in outs for o in run], procs) if proc.returncode]
    assert not failed, '\n\n'.join(f'{o}.log:\n' + open(o + '.log').read()[-3000:] for o in failed)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return [[(json.loads(open(o + '.json').read()), np.load(o + '.npz')['example_index'])
           for o in run] for run in outs]


def params_of(workdir):
  _, params, step = checkpointing.load_trained(workdir)
  return jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, params)), step


def test_two_processes_train_stop_resume_and_fine_tune(shapesworld_dir, tmp_path):
  dataset = shapesworld_dir
  steps = 6
  spec = lambda workdir, **kw: dict(task='pretrain', dataset=dataset, total_steps=steps,
                                    workdir=str(tmp_path / workdir), init_from='', **kw)
  one, two, stopped = launch([(1, spec('one')), (2, spec('two')),
                              (2, spec('stopped', sigterm_at=3))], tmp_path, 'a')

  # Per-host input shards: disjoint, and together the 1-process batch of every step.
  (_, rows_one), = one
  (_, rows_0), (_, rows_1) = two
  assert rows_one.shape == (steps, 8) and rows_0.shape == rows_1.shape == (steps, 4)
  for step in range(steps):
    assert not set(rows_0[step]) & set(rows_1[step])
    assert sorted(np.concatenate([rows_0[step], rows_1[step]])) == sorted(rows_one[step])

  # Losses, evaluation metrics and parameters equal the 1-process run's.
  (results_one, _), = one
  for results, _ in two:
    assert results['final_step'] == steps
    for key, value in results_one.items():
      if key.startswith(('train/loss', 'train/mlm', 'train/itc', 'val/')):
        np.testing.assert_allclose(results[key], value, atol=ATOL, rtol=RTOL, err_msg=key)
  assert any(k.startswith('val/') for k in results_one)
  leaves_one, _ = params_of(str(tmp_path / 'one'))
  leaves_two, _ = params_of(str(tmp_path / 'two'))
  for a, b in zip(leaves_one, leaves_two):
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=RTOL)

  # A SIGTERM to process 1 only stops both after the same step, with a checkpoint of it.
  stops = [results.get('preempted_at_step') for results, _ in stopped]
  assert stops[0] == stops[1] and stops[0] is not None and 3 <= stops[0] < steps, stops
  _, saved = params_of(str(tmp_path / 'stopped'))
  assert saved == stops[0]

  # The resume ends bit-identical to the uninterrupted 2-process run; then a fine-tuning run.
  resumed, tuned = launch([(2, spec('stopped')),
                           (2, dict(task='retrieval', dataset=str(tmp_path / 'task_data'),
                                    total_steps=2, workdir=str(tmp_path / 'tuned'),
                                    init_from=str(tmp_path / 'two')))], tmp_path, 'b')
  for (results, rows), (_, rows_straight) in zip(resumed, two):
    assert results['final_step'] == steps
    # rows[0] is the batch the trainer reads before it restores the iterator's position.
    np.testing.assert_array_equal(rows[1:], rows_straight[stops[0]:])
  leaves_resumed, step = params_of(str(tmp_path / 'stopped'))
  assert step == steps
  for a, b in zip(leaves_two, leaves_resumed):
    np.testing.assert_array_equal(a, b)
  for results, _ in tuned:
    assert results['final_step'] == 2 and np.isfinite(results['train/loss'])
    assert 0.0 <= results['val/retrieval/t2i_R@1'] <= 1.0
  assert tuned[0][0]['val/retrieval/t2i_R@1'] == tuned[1][0]['val/retrieval/t2i_R@1']
