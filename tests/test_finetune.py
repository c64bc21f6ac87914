"""Few-step fine-tuning of every task through the one trainer (`train.train_and_evaluate`) on
ShapesWorld task data, from main-like `:smoke` configs initialised from a pre-training run;
init_from, the required init_from, VQA's recorded answer count, split checks, main.py."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune_common
from configs import mvp_tiny
from input_pipeline.shapesworld import generate
from mvp_jax import checkpointing
from mvp_jax import model as model_lib
from mvp_jax import tasks
from mvp_jax import train
from mvp_jax import train_step


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A pre-training run directory (configs + an orbax checkpoint of an unboxed train state) of
  the smoke model on smoke ShapesWorld. The weights are its initialisation: compiling a
  pre-training step adds nothing to what these tests check."""
  root = tmp_path_factory.mktemp('pretrain')
  config = mvp_tiny.get_config('smoke')
  config.data.directory = str(root / 'shapesworld')
  directory = train.data.prepare_dataset(config.data, str(root))
  model_cfg = train.model_config(config, directory)
  params = nn.unbox(model_lib.init_params(model_cfg, jax.random.PRNGKey(0)))
  state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state={},
                                rng=jax.random.PRNGKey(1))
  run = root / 'run'
  run.mkdir()
  manager = checkpointing.CheckpointManager(str(run / 'checkpoints'), save_every=1, keep=1,
                                            async_save=False)
  manager.save(7, state, {}, force=True)
  manager.close()
  checkpointing.save_run_configs(str(run), config, model_cfg)
  return str(run)


def smoke_config(task, init_from, data_dir):
  """`configs/<task>_shapesworld.py:smoke` as main.py builds it, with a few overrides."""
  config = finetune_common.shapesworld(task, 'smoke')
  config.data.shapesworld = dict(num_train=6, num_val=3, num_test=0)
  config.data.update(max_seq_length=12, max_phrases=4, max_tag_length=6, max_img_seq_length=7,
                     directory=data_dir)
  config.mesh_shape = (1, 1, 1)
  config.init_from = init_from
  config.total_steps = 2
  config.phrase_layer = 0
  config.vqa_init_from_mlm = task == 'vqa'
  return config


@pytest.mark.parametrize('task', ['retrieval', 'vqa',
                                  pytest.param('ve', marks=pytest.mark.slow),
                                  pytest.param('re', marks=pytest.mark.slow)])
def test_every_task_trains_from_a_pretraining_run(pretrained, tmp_path, task):
  config = smoke_config(task, pretrained, str(tmp_path / 'data'))
  if task == 'vqa':  # a scored evaluation, and a predictions-only one (a split without answers)
    config.evals = dict(val=dict(type='vqa', split='val', predictions=True, prefix='val/vqa'),
                        val_predictions=dict(type='vqa', split='val', predictions=True,
                                             score=False, prefix='unscored/vqa'))
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['final_step'] == 2
  assert np.isfinite(results['train/loss'])
  metric = {'retrieval': 'val/retrieval/t2i_R@1', 'vqa': 'val/vqa/accuracy',
            've': 'val/ve/accuracy', 're': 'val/re/accuracy'}[task]
  assert 0.0 <= results[metric] <= 1.0
  _, source, _ = checkpointing.load_trained(pretrained)
  model_cfg, tuned, _ = checkpointing.load_trained(str(tmp_path / 'run'))
  assert set(tuned['backbone']) == set(source['backbone'])
  if task == 'vqa':
    with open(tmp_path / 'run' / 'vqa_predictions_val.json') as f:
      predictions = json.load(f)
    assert len(predictions) == results['val/vqa/num_questions']
    assert 'unscored/vqa/accuracy' not in results  # a split without answers logs no accuracy
    assert results['unscored/vqa/num_questions'] == results['val/vqa/num_questions']
    assert set(predictions[0]) == {'question_id', 'answer'}
    assert predictions[0]['answer'] in generate.vqa_answers()
    # Issue 10 item 19: the run's model_config.json records the answer count.
    assert model_cfg.qa_num_answers == len(generate.vqa_answers())
    assert tuned['answer_head']['decoder'].shape[0] == model_cfg.qa_num_answers


def test_init_from_copies_the_backbone_and_the_mlm_transform(pretrained):
  model_cfg, source, _ = checkpointing.load_trained(pretrained)
  model_cfg = model_cfg.replace(qa_num_answers=5)
  model = tasks.get('vqa').create_model(None, model_cfg)
  fresh = nn.unbox(model.init(jax.random.PRNGKey(3), model_lib.dummy_batch(model_cfg))['params'])
  loaded, report = train.weights.load(pretrained, fresh, model_config=model_cfg, task='vqa',
                                      vqa_init_from_mlm=True)
  flat_source = traverse_util.flatten_dict(source)
  for key, value in traverse_util.flatten_dict(loaded).items():
    if key[0] == 'backbone':
      np.testing.assert_array_equal(value, flat_source[key])
  np.testing.assert_array_equal(loaded['answer_head']['transform']['kernel'],
                                source['mlm_head']['transform']['kernel'])
  assert loaded['answer_head']['decoder'].shape == (5, model_cfg.hidden_size)
  assert 'answer_head/decoder' in report.fresh


def test_task_config_requires_init_from(pretrained, tmp_path):
  """Issue 10 item 19: no hard-coded default workdir; an unset init_from is refused by name."""
  config = finetune_common.shapesworld('ve', '')
  assert config.init_from is None and not config.data.pretraining_dir
  config.data.directory = str(tmp_path / 'data')
  with pytest.raises(ValueError, match=r'--config.init_from=PATH'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')
  assert finetune_common.shapesworld('ve', 'scratch').init_from == ''
  del pretrained


def test_missing_task_split_fails_before_step_zero(pretrained, tmp_path):
  config = smoke_config('ve', pretrained, str(tmp_path / 'data'))
  finetune_common.set_evals(config, ('val', 'test'), every=0)  # num_test=0: no test split
  with pytest.raises(ValueError, match="'test'"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_vqa_v2_scores_val_and_only_predicts_test():
  """Issue 10 item 5: test has no answers, so it is not scored."""
  from configs import vqa_v2  # pylint: disable=g-import-not-at-top
  config = vqa_v2.get_config('quirk')
  assert config.task == 'vqa' and config.model['cross_tag_slots'] == 10
  assert config.model['dropout_rate'] == 0.3 and config.optimizer.lr == 5e-5
  assert config.data.max_tag_length == 30
  evals = config.evals.to_dict()
  assert evals['val']['split'] == 'val' and evals['val'].get('score', True)
  assert evals['test'] == dict(type='vqa', split='test', every=0, predictions=True, score=False)


def test_main_runs_every_task_through_one_trainer():
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'main.py')) as f:
    source = f.read()
  assert 'train.train_and_evaluate' in source and 'finetune' not in source
  assert set(tasks.NAMES) == {'pretrain', 'retrieval', 'vqa', 've', 're'}
  with pytest.raises(ValueError, match='captioning'):
    tasks.get('captioning')
