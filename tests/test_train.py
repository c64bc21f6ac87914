"""The trainer end to end on pre-training: few-step training, meshes, resume, init_from, the NaN
guard, the stage switch, refused resumes, unreadable checkpoints, split and config checks.

Runs the real `train_and_evaluate` on a small ShapesWorld dataset generated once per session.
"""

import os
import signal
from typing import Optional

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import mvp_tiny
from input_pipeline import storage
from mvp_jax import checkpointing
from mvp_jax import convert
from mvp_jax import optim
from mvp_jax import train
from mvp_jax.tasks import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def shapesworld_dir(tmp_path_factory):
  config = mvp_tiny.get_config('smoke')
  directory = str(tmp_path_factory.mktemp('shapesworld'))
  config.data.directory = directory
  return train.data.prepare_dataset(config.data, directory)


def smoke_config(directory, **overrides):
  config = mvp_tiny.get_config('smoke')
  config.data.directory = directory
  config.model['dropout_rate'] = 0.0
  config.model['attention_dropout_rate'] = 0.0
  config.evals = {}
  config.async_checkpointing = False
  config.mesh_shape = (1, 1, 1)
  config.optimizer.warmup_steps = 1
  for key, value in overrides.items():
    target = config
    *path, last = key.split('.')
    for name in path:
      target = target[name]
    target[last] = value
  return config


def params_of(workdir):
  _, params, step = checkpointing.load_trained(workdir)
  return jax.tree_util.tree_map(np.asarray, params), step


def test_config_overrides_from_the_command_line(monkeypatch):
  argv = ['main.py', f'--config={ROOT}/configs/mvp_tiny.py:smoke', '--config.batch_size=16',
          '--config.optimizer.lr=0.125', '--config.schedule=two_stage']
  monkeypatch.setattr('sys.argv', argv)  # config_flags reads the overrides from sys.argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=values)
  values(argv)
  assert values.config.batch_size == 16
  assert values.config.optimizer.lr == 0.125
  assert values.config.schedule == 'two_stage'
  assert values.config.total_steps == 6  # from the :smoke argument


def test_base_config_is_the_paper_setting():
  from configs import mvp_base  # pylint: disable=g-import-not-at-top
  config = mvp_base.get_config()
  assert (config.model['hidden_size'], config.model['num_heads'], config.model['mlp_dim']) == (
      768, 12, 3072)
  assert (config.model['num_text_layers'], config.model['num_visual_layers'],
          config.model['num_cross_layers']) == (6, 6, 6)
  assert config.batch_size == 1024
  assert (config.data.max_seq_length + config.data.max_phrases, config.data.max_tag_length,
          config.data.max_img_seq_length) == (40, 20, 50)
  assert (config.optimizer.b1, config.optimizer.b2, config.optimizer.eps,
          config.optimizer.weight_decay) == (0.9, 0.999, 1e-8, 0.01)


def test_two_stage_schedule_freezes_cross_encoder_in_stage_one(shapesworld_dir, tmp_path):
  config = smoke_config(shapesworld_dir, total_steps=2, schedule='two_stage', stage1_steps=2,
                        checkpoint_every=1)
  config.keep_checkpoints = 5
  train.train_and_evaluate(config, str(tmp_path))
  manager_dir = str(tmp_path)
  _, before, _ = checkpointing.load_trained(manager_dir, step=1)
  _, after, _ = checkpointing.load_trained(manager_dir, step=2)
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), before, after)
  assert all(jax.tree_util.tree_leaves(same['backbone']['cross_encoder']))
  assert all(jax.tree_util.tree_leaves(same['itm_head']))
  assert not all(jax.tree_util.tree_leaves(same['backbone']['text_encoder']))
  assert pretrain.stage_at(config, 1) == 1 and pretrain.stage_at(config, 2) == 2


@pytest.mark.slow  # two whole runs; the step-level check is in test_train_step
def test_stage_switch_first_update_is_a_first_adam_step(shapesworld_dir, tmp_path):
  """Issue 9 / issue 10 item 3 (fails on the shared-counter optimiser of before).

  Two stage-1 steps, then the first stage-2 step: every parameter of the cross-modal encoder
  moves by lr · |g| / (|g| + eps) = lr (no weight decay here), as a first Adam step does. One
  AdamW counter shared with the frozen parameters made that 0.64 lr (bias correction of step 3
  applied to moments that had seen one gradient).
  """
  config = smoke_config(shapesworld_dir, total_steps=3, schedule='two_stage', stage1_steps=2,
                        checkpoint_every=1)
  config.keep_checkpoints = 5
  config.optimizer.weight_decay = 0.0
  train.train_and_evaluate(config, str(tmp_path))
  _, before, _ = checkpointing.load_trained(str(tmp_path), step=2)
  _, after, _ = checkpointing.load_trained(str(tmp_path), step=3)
  lr = float(optim.learning_rate_schedule(config.optimizer, 3, config.batch_size)(2))
  ratios = np.concatenate([
      np.abs(np.asarray(a) - np.asarray(b)).reshape(-1) / lr for a, b in zip(
          jax.tree_util.tree_leaves(after['backbone']['cross_encoder']),
          jax.tree_util.tree_leaves(before['backbone']['cross_encoder']))])
  moved = ratios[ratios > 1e-3]  # elements with a non-zero gradient
  assert moved.size > 0.9 * ratios.size
  np.testing.assert_allclose(np.median(moved), 1.0, atol=1e-3)
  assert moved.max() < 1.0 + 1e-3


@pytest.fixture(scope='module')
def single_device_run(shapesworld_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('single'))
  config = smoke_config(shapesworld_dir, total_steps=2, negatives='global', log_every=1)
  config.optimizer.eps = 1e-3
  results = train.train_and_evaluate(config, workdir)
  return results, params_of(workdir)[0], workdir


@pytest.mark.slow  # whole runs on two meshes; the model-level mesh parity is in test_model_sharding
@pytest.mark.parametrize('mesh_shape,rules', [((4, 2, 1), 'fsdp'), ((4, 1, 2), 'tensor')])
def test_meshes_match_one_device(shapesworld_dir, single_device_run, tmp_path, mesh_shape,
                                 rules):
  """Same loss and updated parameters on 8 devices as on one device (global negatives).

  Tolerance 1e-5. Sharded reductions sum in another order; Adam's eps is raised to 1e-3 here
  because its first step divides each gradient by its own magnitude, which would turn float32
  rounding of near-zero gradients into differences of the size of the learning rate.
  """
  results_single, params_single, _ = single_device_run
  sharded = smoke_config(shapesworld_dir, total_steps=2, negatives='global', log_every=1,
                         mesh_shape=mesh_shape, sharding_rules=rules)
  sharded.optimizer.eps = 1e-3
  results_sharded = train.train_and_evaluate(sharded, str(tmp_path))
  np.testing.assert_allclose(results_sharded['train/loss'], results_single['train/loss'],
                             rtol=1e-5)
  params_sharded, _ = params_of(str(tmp_path))
  for a, b in zip(jax.tree_util.tree_leaves(params_single),
                  jax.tree_util.tree_leaves(params_sharded)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def sigterm_during_step(monkeypatch, step: int, seen: Optional[list] = None):
  """Makes a preemption notice (SIGTERM to this process) arrive during training step `step`
  (1-based) of the next `train_and_evaluate`; returns a function that stops it.

  The training loop puts each step's host batch on device with `train.data.to_global` once, so
  its `step`-th call sends the signal (evaluation calls it too: send it before any evaluation).
  `seen`, a list, receives every host batch the loop puts on device.
  """
  original = train.data.to_global
  calls = {'n': 0}

  def to_global_then_sigterm(batch, sharding):
    calls['n'] += 1
    if seen is not None:
      seen.append(jax.tree_util.tree_map(np.array, dict(batch)))
    if calls['n'] == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(batch, sharding)

  monkeypatch.setattr(train.data, 'to_global', to_global_then_sigterm)
  return lambda: monkeypatch.setattr(train.data, 'to_global', original)


def test_sigterm_then_resume_equals_uninterrupted_run(shapesworld_dir, tmp_path, monkeypatch):
  config = smoke_config(shapesworld_dir, total_steps=6, checkpoint_every=100)
  train.train_and_evaluate(config, str(tmp_path / 'straight'))

  stop_sigterm = sigterm_during_step(monkeypatch, 3)  # during step 3 a preemption notice arrives
  interrupted = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert interrupted['preempted_at_step'] == 3
  stop_sigterm()
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed['final_step'] == 6
  straight_params, _ = params_of(str(tmp_path / 'straight'))
  resumed_params, step = params_of(str(tmp_path / 'resumed'))
  assert step == 6
  for a, b in zip(jax.tree_util.tree_leaves(straight_params),
                  jax.tree_util.tree_leaves(resumed_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # two whole runs
def test_two_sigterms_during_the_first_compile_save_once(shapesworld_dir, tmp_path, monkeypatch):
  """Two preemption notices before step 1 has even compiled, with a periodic save due at that
  same step and asynchronous orbax saves (the production default): one readable checkpoint of
  step 1 and a clean stop. An earlier loop saved the periodic step and then forced
  a second save of it, which orbax refused with StepAlreadyExistsError."""
  config = smoke_config(shapesworld_dir, total_steps=3, checkpoint_every=1,
                        async_checkpointing=True)
  original = train.data.to_global
  calls = {'n': 0}

  def to_global_then_two_sigterms(batch, sharding):
    calls['n'] += 1
    if calls['n'] == 1:  # step 1's batch: the jitted step compiles right after this
      os.kill(os.getpid(), signal.SIGTERM)
      os.kill(os.getpid(), signal.SIGTERM)
    return original(batch, sharding)

  monkeypatch.setattr(train.data, 'to_global', to_global_then_two_sigterms)
  interrupted = train.train_and_evaluate(config, str(tmp_path))
  assert interrupted['preempted_at_step'] == 1
  assert sorted(p.name for p in (tmp_path / checkpointing.CHECKPOINTS).iterdir()
                if p.name.isdigit()) == ['1']
  _, step = params_of(str(tmp_path))  # it restores (the resume itself: the test above)
  assert step == 1


def test_nan_loss_stops_before_checkpointing(shapesworld_dir, tmp_path, monkeypatch):
  config = smoke_config(shapesworld_dir, total_steps=6, checkpoint_every=2, log_every=1)
  original = train.data.to_global
  calls = {'n': 0}

  def poisoned(batch, sharding):
    calls['n'] += 1
    if calls['n'] == 3:  # step 3's regions are NaN
      batch = dict(batch, img_feats=np.full_like(batch['img_feats'], np.nan))
    return original(batch, sharding)

  monkeypatch.setattr(train.data, 'to_global', poisoned)
  with pytest.raises(train.NonFiniteLossError, match='mcr') as raised:
    train.train_and_evaluate(config, str(tmp_path))
  # Issue 10 item 12: the message names the step and the examples of its batch.
  assert 'at step 3 on the examples [' in str(raised.value)
  assert "of split 'train'" in str(raised.value)
  params, step = params_of(str(tmp_path))
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


def test_init_from_checks_keys(shapesworld_dir, single_device_run, tmp_path):
  model_config, params, _ = checkpointing.load_trained(single_device_run[2])
  state = convert.params_to_torch(params, model_config)
  del state['bert.pooler.dense.bias']
  state['cls.extra.weight'] = np.zeros(3, np.float32)
  path = str(tmp_path / 'weights.safetensors')
  convert.save_safetensors(state, path)
  config = smoke_config(shapesworld_dir, total_steps=2, init_from=path)
  with pytest.raises(ValueError, match='backbone/pooler/dense/bias'):
    train.train_and_evaluate(config, str(tmp_path / 'target'))
  config.init_skip = (r'backbone/pooler/dense/bias', r'^cls\.extra')
  assert train.train_and_evaluate(config, str(tmp_path / 'target2'))['final_step'] == 2
  # The loaded backbone is the checkpoint's (the 2 steps after it moved it only slightly).
  _, tuned, _ = checkpointing.load_trained(str(tmp_path / 'target2'), step=2)
  source = np.asarray(params['backbone']['embeddings']['word_embeddings']['embedding'])
  np.testing.assert_allclose(tuned['backbone']['embeddings']['word_embeddings']['embedding'],
                             source, atol=0.05)


def test_vocabularies_are_beside_the_data(shapesworld_dir):
  tokenizer, concept_vocab = storage.load_vocabularies(shapesworld_dir)
  assert concept_vocab.num_rows > tokenizer.vocab_size


def read_metrics(workdir):
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, train.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_every_loss_decreases_and_evaluation_runs(shapesworld_dir, tmp_path):
  config = smoke_config(shapesworld_dir, total_steps=40, log_every=10, checkpoint_every=1000)
  config.evals = mvp_tiny.mvp_base.pretraining_evals(every=40, top_k=4, add_contrastive=True)
  config.optimizer.update(lr=2e-3, warmup_steps=2)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['final_step'] == 40
  logged = [m for m in read_metrics(str(tmp_path)) if 'train/loss' in m]
  assert [m['step'] for m in logged] == [10, 20, 30, 40]
  for name in ('loss_mcr', 'loss_itc', 'loss_mlm', 'loss_itm', 'loss_wpg'):
    first, last = logged[0][f'train/{name}'], logged[-1][f'train/{name}']
    assert last < first, (name, [m[f'train/{name}'] for m in logged])
  for name in ('retrieval/t2i_R@1', 'retrieval/i2t_R@10', 'val/grounding_accuracy',
               'val/mlm_accuracy', 'val/mcr_accuracy'):
    assert 0.0 <= results[name] <= 1.0
  assert results['retrieval/num_images'] == 16 and results['retrieval/num_captions'] == 48
  assert results['train/examples_per_s'] > 0 and results['train/tflops_per_s_per_device'] > 0
  # A (1, 1, 1) mesh: one device, so the global figure is the per-device one.
  np.testing.assert_allclose(results['train/tflops_per_s_global'],
                             results['train/tflops_per_s_per_device'])
  assert os.path.exists(tmp_path / 'model_config.json')


def test_programs_compile_with_the_cpu_scheduler_and_the_heap_is_released(shapesworld_dir,
                                                                         tmp_path, monkeypatch):
  options, releases = [], []
  jit = jax.jit

  def recording_jit(fun, *args, **kwargs):
    if 'compiler_options' in kwargs:
      options.append(kwargs['compiler_options'])
    return jit(fun, *args, **kwargs)

  monkeypatch.setattr(jax, 'jit', recording_jit)
  monkeypatch.setattr(train.host_memory, 'release_free_heap', lambda: releases.append(1))
  config = smoke_config(shapesworld_dir, total_steps=2, log_every=1, checkpoint_every=1000)
  train.train_and_evaluate(config, str(tmp_path))
  memory_optimized = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  assert options == [memory_optimized, memory_optimized]  # the init and the update step
  assert releases == [1]  # once the step is compiled


def test_few_steps_on_a_mock_vinvl_dataset(tmp_path):
  """VinVL TSVs -> importer -> vocabularies -> a few training steps with 2054-d regions."""
  import vinvl_fixtures as fx  # pylint: disable=g-import-not-at-top
  from input_pipeline import import_vinvl  # pylint: disable=g-import-not-at-top
  from input_pipeline import train_vocab  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = [fx.make_image(rng, str(100 + i), num_boxes=int(rng.integers(3, 7)))
            for i in range(12)]
  features = fx.write_tsv(tmp_path / 'features.tsv',
                          [fx.feature_line(im.image_id, im.features()) for im in images])
  predictions = fx.write_tsv(tmp_path / 'predictions.tsv',
                             [fx.prediction_line(im) for im in images])
  words = ['a', 'the', 'on', 'with', 'near'] + list(fx.CLASSES)
  captions = {im.image_id: [f'a {im.classes[0]} near the {im.classes[-1]}',
                            f'the {im.classes[1]} with a {im.classes[0]}'] for im in images}
  caption_file = fx.write_json(tmp_path / 'captions.json', fx.caption_list(captions))
  vocab = str(tmp_path / 'vocab.txt')
  train_vocab.write_vocab(words, vocab)
  out_dir = str(tmp_path / 'records')
  import_vinvl.import_vinvl(features=features, predictions=predictions, captions=caption_file,
                            out_dir=out_dir, split='train', builtin_phrases=True)
  import_vinvl.write_vocabularies(out_dir, vocab, min_concept_count=1)
  config = smoke_config(out_dir, total_steps=3, log_every=1)
  config.data.kind = 'records'
  config.model['region_feature_dim'] = 2054
  config.data.update(max_seq_length=10, max_phrases=3, max_tag_length=6, max_img_seq_length=5,
                     truncate_regions=True)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['final_step'] == 3
  for name in ('loss_mcr', 'loss_itc', 'loss_mlm', 'loss_itm', 'loss_wpg'):
    assert np.isfinite(results[f'train/{name}'])
  assert results['train/loss_wpg'] >= 0.0
