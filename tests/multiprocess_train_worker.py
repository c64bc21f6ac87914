"""One JAX process of tests/test_multiprocess_train.py: a training run of the real trainer.

  python tests/multiprocess_train_worker.py PROCESS_ID NUM_PROCESSES PORT SPEC.json

SPEC.json: {"task": "pretrain" | "retrieval", "dataset": DIR, "workdir": DIR, "total_steps": N,
"init_from": DIR or "", "sigterm_at": K or null, "out": PREFIX}. The run has 8 CPU devices in
all: 8 in one process, or 4 in each of 2 processes joined by `jax.distributed.initialize` (gloo
collectives). With "sigterm_at", the LAST process sends itself SIGTERM when it reads its K-th
training batch; the other process gets no signal. Writes PREFIX<process id>.json (the trainer's
results) and PREFIX<process id>.npz (this host's `example_index` rows of every training batch).
"""

import json
import os
import signal
import sys

PROCESS_ID, NUM_PROCESSES, PORT, SPEC = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                         sys.argv[4])
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={8 // NUM_PROCESSES}'
os.environ['CUDA_VISIBLE_DEVICES'] = ''
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

import numpy as np  # pylint: disable=g-import-not-at-top

import jax_processes  # pylint: disable=g-import-not-at-top

jax_processes.start(PROCESS_ID, NUM_PROCESSES, PORT)

from configs import mvp_base  # pylint: disable=g-import-not-at-top
from mvp_jax import train  # pylint: disable=g-import-not-at-top
import test_finetune  # pylint: disable=g-import-not-at-top
import test_train  # pylint: disable=g-import-not-at-top


def main():
  with open(SPEC, encoding='utf-8') as f:
    spec = json.load(f)
  if spec['task'] == 'pretrain':
    config = test_train.smoke_config(spec['dataset'], total_steps=spec['total_steps'],
                                     checkpoint_every=100, log_every=1)
    config.evals = mvp_base.pretraining_evals(every=spec['total_steps'], top_k=4,
                                              add_contrastive=True)
  else:
    config = test_finetune.smoke_config(spec['task'], spec['init_from'], spec['dataset'])
    config.total_steps = spec['total_steps']
  config.mesh_shape = (-1, 1, 1)
  # Adam divides by sqrt(v) + eps: with the default 1e-8 a near-zero gradient whose sign follows
  # the order of the float reductions moves its parameter by a whole lr. A larger eps keeps the
  # updates proportional to the gradients, as tests/test_train.py::test_meshes_match_one_device.
  config.optimizer.eps = 1e-3
  seen = []
  create_iterator = train.data.create_iterator

  class Recorded:
    """The training iterator, recording this host's example_index rows of every batch (and
    sending SIGTERM at the sigterm_at-th batch on the last process)."""

    def __init__(self, iterator):
      self._iterator = iterator

    def __getattr__(self, name):
      return getattr(self._iterator, name)

    def __iter__(self):
      return self

    def __next__(self):
      batch = next(self._iterator)
      seen.append(np.asarray(batch['example_index']))
      if spec.get('sigterm_at') == len(seen) and PROCESS_ID == NUM_PROCESSES - 1:
        os.kill(os.getpid(), signal.SIGTERM)
      return batch

  def recorded(*args, train=False, **kwargs):  # pylint: disable=redefined-outer-name
    iterator = create_iterator(*args, train=train, **kwargs)
    return Recorded(iterator) if train else iterator

  train.data.create_iterator = recorded
  results = train.train_and_evaluate(config, spec['workdir'])
  with open(f'{spec["out"]}{PROCESS_ID}.json', 'w', encoding='utf-8') as f:
    json.dump(results, f)
  np.savez(f'{spec["out"]}{PROCESS_ID}.npz', example_index=np.asarray(seen))


if __name__ == '__main__':
  main()
