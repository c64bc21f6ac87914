"""Entry point: `python main.py --config=configs/mvp_tiny.py --workdir=/tmp/mvp_tiny`.

`config.task` picks the trainer: `pretrain` (the default) runs `mvp_jax.train`, and `retrieval`,
`vqa`, `ve` or `re` run `mvp_jax.finetune`. Kept short on purpose: the logic lives in those
libraries, importable from a notebook.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and generated data.')
config_flags.DEFINE_config_file('config', None, 'Config file (override fields with --config.x=y).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Keep TensorFlow (used only for tf.data) off any accelerator JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  task = FLAGS.config.get('task', 'pretrain')
  if task == 'pretrain':
    from mvp_jax import train  # pylint: disable=g-import-not-at-top
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif task in ('retrieval', 'vqa', 've', 're'):
    from mvp_jax import finetune  # pylint: disable=g-import-not-at-top
    results = finetune.finetune_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    raise app.UsageError(f"config.task must be pretrain, retrieval, vqa, ve or re; got {task!r}")
  logging.info('Final metrics: %s', results)
  for name in sorted(results):
    print(f'{name}: {results[name]:.4f}' if isinstance(results[name], float)
          else f'{name}: {results[name]}')


if __name__ == '__main__':
  app.run(main)
