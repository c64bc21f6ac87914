"""Entry points (issue 9 item 6, issue 10 items 14, 15): no flags or TF at import, absl CLIs."""

import json
import os
import re
import subprocess
import sys
import textwrap

from input_pipeline import phrase_extractor
from input_pipeline.shapesworld import build
from input_pipeline import train_vocab

from conftest import ROOT

# Every module with a command line; importing none of them may define a flag.
CLI_MODULES = ('input_pipeline.import_vinvl', 'input_pipeline.phrase_extractor',
               'input_pipeline.train_vocab', 'input_pipeline.shapesworld.build',
               'input_pipeline.tasks.vqa', 'input_pipeline.tasks.snli_ve',
               'input_pipeline.tasks.refcoco', 'input_pipeline.tasks.custom',
               'input_pipeline.tasks.shapesworld_tasks', 'mvp_jax.data')


def _pythonpath() -> str:
  return os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])


def _python(code: str, timeout: int = 240) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': _pythonpath(), 'TF_CPP_MIN_LOG_LEVEL': '3'}
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=str(ROOT), env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_importing_the_packages_defines_no_flag_and_starts_no_tensorflow():
  result = _python('''
      import sys
      from absl import flags
      import mvp_jax, input_pipeline
      print(sys.modules['mvp_jax'].__file__)
      print('tensorflow' in sys.modules, 'tensorflow' in sys.modules and
            sys.modules['tensorflow'].executing_eagerly())
      print(sorted(m for m, f in flags.FLAGS.flags_by_module_dict().items()
                   if m.split('.')[0] in ('mvp_jax', 'input_pipeline') and f))
  ''')
  assert result.returncode == 0, result.stderr
  path, tf_state, project_flags = result.stdout.strip().splitlines()[-3:]
  assert path.startswith(str(ROOT))
  assert tf_state == 'False False'
  assert project_flags == '[]'


def test_importing_every_command_line_module_defines_no_flag():
  # The listed command lines, then every other module of both packages (a CLI added later is
  # covered without being listed).
  result = _python(f'''
      from absl import flags
      import importlib, pkgutil
      import mvp_jax, input_pipeline
      names = list({CLI_MODULES!r})
      for package in (mvp_jax, input_pipeline):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.')]
      for name in names:
        importlib.import_module(name)
      print(len(set(names)), sorted(m for m, f in flags.FLAGS.flags_by_module_dict().items()
                                    if m.split('.')[0] in ('mvp_jax', 'input_pipeline') and f))
  ''')
  assert result.returncode == 0, result.stderr
  count, project_flags = result.stdout.strip().splitlines()[-1].split(' ', 1)
  assert int(count) > 50  # the walk found the packages' modules, not only the list
  assert project_flags == '[]'


def test_a_user_script_with_its_own_seed_flag_builds_and_reads_shapesworld(tmp_path):
  script = tmp_path / 'user_train.py'
  script.write_text(textwrap.dedent(f'''
      import sys
      from absl import app, flags
      import ml_collections
      flags.DEFINE_integer('seed', 7, 'The user\\'s own seed.')
      flags.DEFINE_string('workdir', None, 'Where to write.')

      def main(argv):
        from mvp_jax import data  # the trainer glue, imported after the user's flags
        config = ml_collections.ConfigDict(dict(
            kind='shapesworld', directory='', max_seq_length=12, max_phrases=4,
            max_tag_length=8, max_img_seq_length=8, mask_prob=0.15,
            shapesworld=dict(num_train_images=6, num_val_images=2, feature_dim=16)))
        directory = data.prepare_dataset(config, flags.FLAGS.workdir)
        data.check_splits(config, directory, ['train', 'val'])
        it = data.create_iterator(config, directory, 'train', per_host_batch_size=4,
                                  seed=flags.FLAGS.seed, train=True)
        batch = next(it)
        print('batch', batch['input_ids_a'].shape, int((batch['mlm_labels_a'] >= 0).sum() > 0))

      if __name__ == '__main__':
        app.run(main)
  '''))
  env = {**os.environ, 'PYTHONPATH': _pythonpath(), 'TF_CPP_MIN_LOG_LEVEL': '3',
         'CUDA_VISIBLE_DEVICES': '', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, str(script), '--seed=3', f'--workdir={tmp_path}'],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'batch (4, 16) 1' in result.stdout


def test_clis_reject_unknown_flags_and_need_their_required_ones(capsys):
  assert build.main(['--out_dir=/nonexistent/x', '--no_such_flag=1']) == 2
  assert 'no_such_flag' in capsys.readouterr().err
  assert train_vocab.main(['--kind=wordpiece']) == 2  # --corpus and --out missing
  assert 'corpus' in capsys.readouterr().err


def test_phrase_extractor_cli_follows_its_flags(tmp_path, capsys):
  assert phrase_extractor.main(['--text=a man riding a brown horse']) == 0
  out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert out == [{'text': 'a man riding a brown horse',
                  'phrases': [['man'], ['horse'], ['horse', 'brown'], ['man', 'ride', 'horse']]}]
  captions = tmp_path / 'captions.txt'
  captions.write_text('a red circle\n\na dog on grass\n')
  assert phrase_extractor.main([f'--input={captions}']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [json.loads(l)['text'] for l in lines] == ['a red circle', 'a dog on grass']
  assert phrase_extractor.main([]) == 2  # nothing asked: no silent evaluation run
  assert 'nothing to do' in capsys.readouterr().err
  assert phrase_extractor.main(['--evaluate', '--num_captions=20']) == 0
  assert json.loads(capsys.readouterr().out)['captions'] == 20


def test_readme_quickstart_trains_the_configured_number_of_steps():
  """Issue 10 item 15: the README's quickstart step count is the one configs/mvp_tiny.py sets."""
  from configs import mvp_tiny  # pylint: disable=g-import-not-at-top
  readme = (ROOT / 'README.md').read_text(encoding='utf-8')
  claimed = re.findall(r'trains ([\d,]+) steps', readme)
  assert claimed, 'the README no longer says how many steps the quickstart trains'
  assert {int(c.replace(',', '')) for c in claimed} == {mvp_tiny.get_config().total_steps}
