"""Evaluation with 2 real JAX processes (4 CPU devices each, gloo collectives) on uneven host
shares equals 1 process holding both shares: two-stage retrieval ranks (host 1's images run out first;
host 0 has a padding-only batch more) and SNLI-VE metrics (3 batches vs 1)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multihost_eval_worker.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two JAX processes
def test_two_processes_with_uneven_shares_equal_one_process(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  runs = [(0, 1), (0, 2), (1, 2)]  # (process id, processes): the reference, then the 2 hosts
  outs = [str(tmp_path / f'{n}_{i}.npz') for i, n in runs]
  procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(n), str(port), out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for (i, n), out in zip(runs, outs)]
  try:
    for proc in procs:
      log, _ = proc.communicate(timeout=300)
      assert proc.returncode == 0, log[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  expected, *per_process = [dict(np.load(out)) for out in outs]
  assert len(expected['ranks/t2i']) == 13 and len(expected['ranks/i2t']) == 8
  assert expected['val/ve/num_examples'] == 13
  for results in per_process:
    assert set(results) == set(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(results[key], value, err_msg=key)
