"""What the trainer checks before it trains, and how it survives a damaged run directory.

Issue 10 items 9 (a refused resume writes nothing), 10 (every split checked before step 0; the
checkpoint of an evaluation step is saved first), 12 (an unreadable latest checkpoint falls back
to the previous one; `:smok` and `--config.model.hidden=64` are refused by name).
"""

import hashlib
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import mvp_tiny
from configs import overrides
from configs import switches
from mvp_jax import checkpointing
from mvp_jax import train
from mvp_jax.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def shapesworld_dir(tmp_path_factory):
  config = mvp_tiny.get_config('smoke')
  directory = str(tmp_path_factory.mktemp('shapesworld'))
  config.data.directory = directory
  return train.data.prepare_dataset(config.data, directory)


def smoke_config(directory, total_steps=2, **changes):
  config = mvp_tiny.get_config('smoke')
  config.data.directory = directory
  config.evals = {}
  config.async_checkpointing = False
  config.mesh_shape = (1, 1, 1)
  config.total_steps, config.checkpoint_every, config.log_every = total_steps, 2, 1
  config.optimizer.warmup_steps = 1
  config.update(changes)
  return config


def snapshot(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def finished_run(shapesworld_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(smoke_config(shapesworld_dir, total_steps=4), workdir)
  return workdir


def test_refused_resume_leaves_the_run_directory_unchanged(shapesworld_dir, finished_run):
  before = snapshot(finished_run)
  wider = smoke_config(shapesworld_dir, total_steps=4)
  wider.model['hidden_size'] = 64
  wider.batch_size = 16
  with pytest.raises(checkpointing.CheckpointError) as raised:
    train.train_and_evaluate(wider, finished_run)
  message = str(raised.value)
  assert 'model.hidden_size: saved 32, now 64' in message
  assert 'batch_size: saved 8, now 16' in message
  assert snapshot(finished_run) == before


@pytest.mark.slow  # two whole runs
def test_resume_with_a_changed_lr_or_total_steps_is_allowed(shapesworld_dir, finished_run,
                                                            tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'copy')
  shutil.copytree(finished_run, workdir)
  config = smoke_config(shapesworld_dir, total_steps=5)
  config.optimizer.lr = 1e-4
  assert train.train_and_evaluate(config, workdir)['final_step'] == 5


def test_resume_check_warns_on_a_changed_lr_or_total_steps_and_writes_nothing(tmp_path, caplog):
  """Issue 10 item 9: lr / total_steps may change on a resume, with a warning naming each."""
  config = smoke_config(str(tmp_path / 'data'), total_steps=4)
  model_cfg = ModelConfig(vocab_size=60, word_vocab_size=40)
  checkpointing.save_run_configs(str(tmp_path), config, model_cfg)
  before = snapshot(str(tmp_path))
  changed = smoke_config(str(tmp_path / 'data'), total_steps=9)
  changed.optimizer.lr = 1e-4
  caplog.set_level(logging.WARNING, logger='absl')
  checkpointing.check_resume(str(tmp_path), changed, model_config=model_cfg)
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('changed total_steps: saved 4, now 9' in m for m in warned), warned
  assert any('changed optimizer.lr: saved ' in m and 'now 0.0001' in m for m in warned), warned
  assert len(warned) == 2
  assert snapshot(str(tmp_path)) == before


def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(shapesworld_dir,
                                                                      finished_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(finished_run, workdir)
  config = smoke_config(shapesworld_dir, total_steps=4)
  _, expected, _ = checkpointing.load_trained(workdir, step=4)
  step_dir = os.path.join(workdir, 'checkpoints', '4', 'state')
  for root, _, files in os.walk(step_dir):  # every array file of step 4 truncated to garbage
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'not a checkpoint')
  results = train.train_and_evaluate(config, workdir)
  assert results['final_step'] == 4
  assert os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints', '4'))
  _, redone, _ = checkpointing.load_trained(workdir, step=4)
  for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(redone)):
    np.testing.assert_array_equal(a, b)  # steps 3-4 redone from step 2: the same weights


def test_missing_eval_split_fails_before_step_zero(shapesworld_dir, tmp_path):
  config = smoke_config(shapesworld_dir)
  config.evals = dict(grounding=dict(type='grounding', split='nosuch', every=1))
  with pytest.raises(ValueError, match="'nosuch'"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')  # nothing trained, nothing saved


def test_checkpoint_is_saved_before_an_evaluation_that_fails(shapesworld_dir, tmp_path,
                                                             monkeypatch):
  config = smoke_config(shapesworld_dir)
  config.evals = dict(grounding=dict(type='grounding', split='val', every=2))

  class Broken(train.evaluators.base.Evaluator):

    def run(self, params):
      raise RuntimeError('evaluation broke')

  monkeypatch.setattr(train.evaluators, 'from_config', lambda cfg, ctx: [
      Broken('grounding', ctx, split='val', every=2)])
  with pytest.raises(RuntimeError, match='evaluation broke'):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.load_trained(str(tmp_path))[2] == 2


def test_config_switch_typo_is_refused():
  with pytest.raises(ValueError, match=r"\['smok'\].*valid switches: \['smoke'\]"):
    mvp_tiny.get_config('smok')
  assert switches.parse('smoke, scratch', ('smoke', 'scratch')) == {'smoke', 'scratch'}
  assert not switches.parse('', ('smoke',))


def test_unknown_override_field_names_it_and_the_valid_ones():
  config = mvp_tiny.get_config('smoke')
  message = overrides.unknown_field(config, 'model.hidden')
  assert "model has no field 'hidden'" in message and "'hidden_size'" in message
  assert overrides.unknown_field(config, 'model.hidden_size') is None
  assert "the config has no field 'optimiser'" in overrides.unknown_field(config, 'optimiser.lr')


@pytest.mark.parametrize('args,expected', [
    (['--config=configs/mvp_tiny.py:smok'], "unknown config switch(es) ['smok']"),
    (['--config=configs/mvp_tiny.py:smoke', '--config.model.hidden=64'],
     "model has no field 'hidden'; valid fields there: ["),
])
def test_main_refuses_config_mistakes_by_name(tmp_path, args, expected):
  result = subprocess.run([sys.executable, 'main.py', f'--workdir={tmp_path / "run"}'] + args,
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert expected in result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')
