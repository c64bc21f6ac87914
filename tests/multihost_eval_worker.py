"""One JAX process of tests/test_evaluators_multiprocess.py.

  python tests/multihost_eval_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Every process has 4 CPU devices. With NUM_PROCESSES 2 each has its own share of the data (the
uneven shares of `retrieval_fixtures.uneven_host_batches`, and 3 vs 1 SNLI-VE batches) and the
mesh is (8, 1, 1) over both; with 1 the process has both shares and a (4, 1, 1) mesh, so the
per-host batches are the same. The retrieval ranks and the VE metrics are written to OUT.npz.
"""

import os
import sys

PROCESS_ID, NUM_PROCESSES, PORT, OUT = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                        sys.argv[4])
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
os.environ['CUDA_VISIBLE_DEVICES'] = ''
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.dirname(os.path.abspath(__file__))]

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top

import jax_processes  # pylint: disable=g-import-not-at-top

jax_processes.start(PROCESS_ID, NUM_PROCESSES, PORT)

from mvp_jax import evaluators  # pylint: disable=g-import-not-at-top
from mvp_jax import sharding  # pylint: disable=g-import-not-at-top
from mvp_jax.downstream import models  # pylint: disable=g-import-not-at-top
import retrieval_fixtures as fx  # pylint: disable=g-import-not-at-top


def main():
  mesh = sharding.create_mesh((-1, 1, 1))
  rows_sharding = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  to_device = lambda b: {k: jax.make_array_from_process_local_data(rows_sharding, np.asarray(v))
                         for k, v in b.items()}

  def mine(host_batches):
    if NUM_PROCESSES == 1:
      return [b for batches in host_batches for b in batches]
    return host_batches[PROCESS_ID]

  results = {}
  model, params = fx.make_model('retrieval', seed=4)
  params = jax.device_put(jax.tree_util.tree_map(np.asarray, params), replicated)
  evaluator = fx.make_evaluator(model, 'retrieval', mine(fx.uneven_host_batches(size=4)),
                                to_device, top_k_images=3, top_k_texts=4)
  with jax.set_mesh(mesh):
    results.update({f'ranks/{k}': v for k, v in evaluator.ranks(params).items()})

  rows = fx.make_rows(images=13, captions=1, seed=7)
  rows['label'] = (np.arange(13) % 3).astype(np.int32)
  host_batches = [fx.as_batches({k: v[:12] for k, v in rows.items()}, 4),  # 3 batches
                  fx.as_batches({k: v[12:] for k, v in rows.items()}, 4)]  # 1 batch
  model = models.VEModel(fx.CFG)
  params = model.init(jax.random.PRNGKey(5), {k: v[:2] for k, v in rows.items()
                                                if k != 'example_index'})['params']
  params = jax.device_put(jax.tree_util.tree_map(np.asarray, params), replicated)
  context = evaluators.EvalContext(model=model, task='ve', to_device=to_device, workdir='',
                                   batches=lambda split, corrupt: mine(host_batches))
  (ve,) = evaluators.from_config({'ve': dict(type='ve', split='val')}, context)
  with jax.set_mesh(mesh):
    results.update(dict(ve.run(params)))
  np.savez(OUT, **results)


if __name__ == '__main__':
  main()
