"""Few-step fine-tuning of each task through `finetune_and_evaluate` on ShapesWorld task data
(`input_pipeline.tasks.shapesworld_tasks`), initialised from a pre-training run; init_from; the
main.py dispatch."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_common
from configs import mvp_tiny
from input_pipeline.shapesworld import generate
from mvp_jax import checkpointing
from mvp_jax import data as data_lib
from mvp_jax import finetune
from mvp_jax import model as model_lib
from mvp_jax import train
from mvp_jax import train_step


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A pre-training run directory (configs + an orbax checkpoint) of the smoke model on smoke
  ShapesWorld. The weights are its initialisation: compiling a pre-training step adds nothing
  to what these tests check."""
  root = tmp_path_factory.mktemp('pretrain')
  config = mvp_tiny.get_config('smoke')
  config.data.directory = str(root / 'shapesworld')
  directory = data_lib.prepare_dataset(config.data, str(root))
  model_cfg = train.model_config(config, directory)
  params = model_lib.init_params(model_cfg, jax.random.PRNGKey(0))
  state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state={},
                                rng=jax.random.PRNGKey(1))
  run = root / 'run'
  run.mkdir()
  manager = checkpointing.CheckpointManager(str(run / 'checkpoints'), save_every=1, keep=1,
                                            async_save=False)
  manager.save(7, state, {}, force=True)
  manager.close()
  checkpointing.save_run_configs(str(run), config, model_cfg)
  return directory, str(run), config


def smoke_config(task, init_from):
  config = finetune_common.shapesworld(task, 'smoke')
  config.data.shapesworld = dict(num_train=6, num_val=3, num_test=0)
  config.data.update(max_seq_length=12, max_phrases=4, max_tag_length=6, max_img_seq_length=7)
  config.mesh_shape = (1, 1, 1)
  config.init_from = init_from
  config.total_steps = 2
  config.phrase_layer = 0
  return config


@pytest.mark.parametrize('task', ['retrieval', 'vqa', 've', 're'])
def test_few_steps_of_each_task_from_a_pretraining_run(pretrained, tmp_path, task):
  shapes_dir, run_dir, _ = pretrained
  config = smoke_config(task, run_dir)
  config.data.update(kind='shapesworld', directory=str(tmp_path / 'data'),
                     pretraining_dir=shapes_dir)
  config.vqa_init_from_mlm = task == 'vqa'
  results = finetune.finetune_and_evaluate(config, str(tmp_path / 'run'))
  assert results['final_step'] == 2
  assert np.isfinite(results['train/loss'])
  metric = {'retrieval': 'val/retrieval/t2i_R@1', 'vqa': 'val/vqa/accuracy',
            've': 'val/ve/accuracy', 're': 'val/re/accuracy'}[task]
  assert 0.0 <= results[metric] <= 1.0
  # The backbone came from the pre-training run (step 0 of fine-tuning = its weights).
  _, source, _ = checkpointing.load_trained(run_dir)
  _, tuned, _ = checkpointing.load_trained(str(tmp_path / 'run'))
  assert set(tuned['backbone']) == set(source['backbone'])
  if task == 'vqa':
    with open(tmp_path / 'run' / 'vqa_predictions_val.json') as f:
      predictions = json.load(f)
    assert len(predictions) == results['val/vqa/num_questions']
    assert set(predictions[0]) == {'question_id', 'answer'}
    assert predictions[0]['answer'] in generate.vqa_answers()


def test_init_from_copies_the_backbone_and_the_mlm_transform(pretrained, tmp_path):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from mvp_jax.downstream import models  # pylint: disable=g-import-not-at-top
  _, run_dir, _ = pretrained
  model_cfg, source, _ = checkpointing.load_trained(run_dir)
  model = models.VQAModel(model_cfg, num_answers=5)
  fresh = model.init(jax.random.PRNGKey(3), model_lib.dummy_batch(model_cfg))['params']
  loaded = nn.unbox(finetune.load_pretrained(fresh, run_dir, 'vqa', model_cfg,
                                             vqa_init_from_mlm=True))
  flat_source = traverse_util.flatten_dict(source)
  for key, value in traverse_util.flatten_dict(loaded).items():
    if key[0] == 'backbone':
      np.testing.assert_array_equal(value, flat_source[key])
  np.testing.assert_array_equal(loaded['answer_head']['transform']['kernel'],
                                source['mlm_head']['transform']['kernel'])
  assert loaded['answer_head']['decoder'].shape == (5, model_cfg.hidden_size)


def test_main_dispatches_on_the_task():
  from configs import vqa_v2  # pylint: disable=g-import-not-at-top
  config = vqa_v2.get_config('quirk')
  assert config.task == 'vqa' and config.model['cross_tag_slots'] == 10
  assert config.model['dropout_rate'] == 0.3 and config.optimizer.lr == 5e-5
  with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'main.py')) as f:
    source = f.read()
  assert 'finetune.finetune_and_evaluate' in source and 'train.train_and_evaluate' in source
  assert data_lib.lengths(config.data).max_tag_length == 30
