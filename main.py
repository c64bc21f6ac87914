"""Entry point: `python main.py --config=configs/mvp_tiny.py --workdir=/tmp/mvp_tiny`.

Every task (`config.task`: pretrain, retrieval, vqa, ve, re) runs `mvp_jax.train.train_and_evaluate`.
Kept short on purpose: the logic lives in libraries importable from a notebook. A config switch
that does not exist (`:smok`) or an override of a field that does not exist
(`--config.model.hidden=64`) stops here with a message naming it and the valid ones.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import overrides
from input_pipeline import cli

FLAGS = flags.FLAGS


def parse_flags(argv):
  """absl flag parsing, with config errors reported as one clear line instead of a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    message = overrides.explain(argv)
    sys.exit(f'Error in the config: {message}' if message else
             f'FATAL Flags parsing error: {type(e).__name__}: {e}\n'
             f'Pass --help to see help on flags.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Keep TensorFlow (used only for tf.data) off any accelerator JAX needs.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  from mvp_jax import quickstart  # pylint: disable=g-import-not-at-top
  from mvp_jax import train  # pylint: disable=g-import-not-at-top
  results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info('Final metrics: %s', results)
  for name in sorted(results):
    print(f'{name}: {results[name]:.4f}' if isinstance(results[name], float)
          else f'{name}: {results[name]}')
  print(quickstart.report(FLAGS.config, FLAGS.workdir, results))


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl, TensorBoard '
                      'events and generated data; a second run with the same workdir resumes.',
                      flag_values=values)
  config_flags.DEFINE_config_file(
      'config', None, 'Config file with an optional switch, e.g. configs/mvp_tiny.py or '
      'configs/mvp_tiny.py:smoke; override any field with --config.FIELD=VALUE '
      '(e.g. --config.total_steps=100).', flag_values=values, lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=values)


def run() -> None:
  """`python main.py` and the `mvp-train` console script."""
  cli.exit_on_help('python main.py', __doc__, define_flags)
  from mvp_jax import host_memory  # pylint: disable=g-import-not-at-top  (after a fast --help)
  host_memory.restart_with_huge_pages()  # once, before any work (MVP_JAX_HUGE_PAGES=0: not)
  define_flags(FLAGS)
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
