"""`mvp_jax.weights`: every source kind into every model; shape, vocabulary and head rules."""

import functools
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

import mvp_jax
from mvp_jax import weights
from mvp_jax.downstream import models
from test_inference import make_run  # pylint: disable=g-bad-import-order

torch = pytest.importorskip('torch')

# VQA and RE without the image LayerNorm, retrieval and VE with it.
CONFIGS = {
    'retrieval': mvp_jax.config.tiny(region_feature_dim=12, num_cross_layers=3),
    'vqa': mvp_jax.config.tiny(region_feature_dim=12, use_region_layernorm=False),
    've': mvp_jax.config.tiny(region_feature_dim=12),
    're': mvp_jax.config.tiny(region_feature_dim=12, use_region_layernorm=False,
                              num_cross_layers=3),
}
NUM_ANSWERS = 11


def task_model(task, config, num_answers=NUM_ANSWERS):
  return {'retrieval': lambda: models.RetrievalModel(config),
          'vqa': lambda: models.VQAModel(config, num_answers),
          've': lambda: models.VEModel(config, 3),
          're': lambda: models.REModel(config, 2, 1)}[task]()


def batch_for(config):
  rng = np.random.RandomState(0)
  batch = mvp_jax.dummy_batch(config, text_length=8, tag_length=4, num_regions=4)
  return dict(batch, input_ids_a=rng.randint(0, config.vocab_size, (2, 8)),
              img_feats=rng.randn(2, 4, config.region_feature_dim).astype(np.float32))


def flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@functools.lru_cache(maxsize=None)
def random_params(task):
  """Unboxed params of a task model with every entry perturbed (no trivial 1 / 0 values)."""
  config = CONFIGS[task]
  model = task_model(task, config)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch_for(config))['params'])
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      np.asarray(leaf + 0.1 * jax.random.normal(k, leaf.shape), np.float32)
      for leaf, k in zip(leaves, keys)])


def write(state, path, half):
  """The state dict as the authors' code saves it: torch.save (.bin) or safetensors."""
  if str(path).endswith('.bin'):
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    torch.save({k: v.half() if half else v for k, v in tensors.items()}, path)
  else:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.array(v, np.float16 if half else np.float32) for k, v in state.items()},
              str(path))
  return str(path)


@pytest.mark.parametrize('task', sorted(CONFIGS))
@pytest.mark.parametrize('form', ['bin_fp32', 'bin_fp16', 'safetensors_fp32',
                                  'safetensors_fp16'])
def test_authors_task_checkpoints_load_and_run(task, form, tmp_path):
  config, params = CONFIGS[task], random_params(task)
  state = weights.to_state_dict(params, config, task)
  # The authors' layouts: only retrieval has logit_scale; VQA's head is `cls.predictions`.
  assert ('logit_scale' in state) == (task == 'retrieval')
  assert ('bert.LayerNorm.weight' in state) == config.use_region_layernorm
  assert ('cls.predictions.decoder.weight' in state) == (task == 'vqa')
  kind, precision = form.split('_')
  path = write(state, tmp_path / f'pytorch_model.{kind}', precision == 'fp16')
  expected = flat(params)
  if precision == 'fp16':
    expected = {k: v.astype(np.float16).astype(np.float32) for k, v in expected.items()}

  loaded_config, loaded = mvp_jax.load_checkpoint(path, num_heads=config.num_heads)
  assert loaded_config == config.replace(word_vocab_size=min(30522, config.vocab_size))
  target = nn.unbox(task_model(task, config).init(jax.random.PRNGKey(5), batch_for(config))[
      'params'])
  via_load, report = weights.load(path, target, model_config=config, task=task)
  assert report.source_kind == 'authors' and report.source_task == task
  assert report.skipped == []
  for got in (flat(loaded), flat(via_load)):
    assert set(got) == set(expected)
    for name, value in expected.items():
      if name == 'backbone/logit_scale' and task != 'retrieval':
        assert got[name] == np.float32(config.logit_scale_init)
      else:
        np.testing.assert_array_equal(got[name], value, err_msg=name)
  if task != 'retrieval':
    assert report.fresh == ['backbone/logit_scale']
    assert any('logit_scale' in note for note in report.notes)
  if form == 'bin_fp32':
    outputs = task_model(task, config).apply({'params': loaded}, batch_for(config))
    reference = task_model(task, config).apply({'params': params}, batch_for(config))
    key = {'retrieval': 'match_logits', 'vqa': 'answer_logits', 've': 'class_logits',
           're': 'region_logits'}[task]
    np.testing.assert_allclose(outputs[key], reference[key], atol=1e-6)


def pretrain_state(config, seed=0):
  params = nn.unbox(mvp_jax.init_params(config, jax.random.PRNGKey(seed)))
  return params, weights.to_state_dict(params, config)


def test_another_width_names_the_parameter_and_shapes(tmp_path):
  wide = mvp_jax.config.tiny(region_feature_dim=12)
  _, state = pretrain_state(wide)
  path = write(state, tmp_path / 'model.safetensors', False)
  narrow = wide.replace(hidden_size=16, mlp_dim=32)
  target = nn.unbox(mvp_jax.init_params(narrow, jax.random.PRNGKey(0)))
  with pytest.raises(weights.WeightsError) as error:
    weights.load(path, target, model_config=narrow)
  message = str(error.value)
  assert ('backbone/cross_encoder/layer_0/attention/query/kernel: checkpoint '
          'bert.mul_encoder.layer.0.attention.self.query.weight (32, 32), model (16, 16)') in message
  assert 'reshape' not in message


def test_missing_backbone_tensor_is_named(tmp_path):
  config = mvp_jax.config.tiny(region_feature_dim=12)
  params, state = pretrain_state(config)
  del state['bert.pooler.dense.bias']
  with pytest.raises(weights.WeightsError, match=r"missing \['backbone/pooler/dense/bias'\]"):
    weights.load(state, params, model_config=config)
  # A skip regex leaves it fresh instead.
  loaded, report = weights.load(state, params, model_config=config, skip=[r'pooler/dense/bias'])
  assert report.fresh == ['backbone/pooler/dense/bias']


def test_heads_across_tasks(tmp_path):
  """Pre-training -> VQA: backbone copied, heads reported; answer head from the MLM head."""
  config = mvp_jax.config.tiny(region_feature_dim=12)
  source, state = pretrain_state(config, seed=3)
  target = nn.unbox(models.VQAModel(config, 5).init(jax.random.PRNGKey(0), batch_for(config))[
      'params'])
  loaded, report = weights.load(state, target, model_config=config, task='vqa',
                                vqa_init_from_mlm=True)
  np.testing.assert_array_equal(loaded['answer_head']['transform']['kernel'],
                                source['mlm_head']['transform']['kernel'])
  np.testing.assert_array_equal(loaded['answer_head']['decoder'],
                                target['answer_head']['decoder'])
  assert sorted(report.fresh) == ['answer_head/bias', 'answer_head/decoder']
  assert 'cls.seq_relationship.weight' in report.skipped
  assert 'cls.predictions.transform.dense.weight' not in report.skipped
  assert 'a pretrain head, not used by a vqa model' in report.summary()

  # A VQA checkpoint with 11 answers into a 5-answer model: that head stays fresh, reported.
  vqa_state = weights.to_state_dict(random_params('vqa'), CONFIGS['vqa'], 'vqa')
  small = CONFIGS['vqa']
  target = nn.unbox(models.VQAModel(small, 5).init(jax.random.PRNGKey(0), batch_for(small))[
      'params'])
  loaded, report = weights.load(vqa_state, target, model_config=small, task='vqa')
  assert 'answer_head/decoder' in report.fresh and 'answer_head/transform/kernel' in report.loaded
  assert 'cls.predictions.decoder.weight' in report.skipped
  assert any('another shape' in note for note in report.notes)


def write_vocab(directory, words, concepts):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'vocab.txt'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(words) + '\n')
  with open(os.path.join(directory, 'id2phrase.json'), 'w', encoding='utf-8') as f:
    json.dump(concepts, f)
  return str(directory)


def test_exported_folder_round_trip_and_vocabulary_check(tmp_path):
  task, config, params = 'vqa', CONFIGS['vqa'], random_params('vqa')
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'green', 'what', 'circle']
  concepts = {'200': ['red', 'circle'], '201': ['blue']}
  data = write_vocab(tmp_path / 'data', words, concepts)
  out = weights.export(params, config, str(tmp_path / 'hub'), task=task, vocab_dir=data)
  assert sorted(os.listdir(out)) == ['config.json', 'id2phrase.json', 'model.safetensors',
                                     'vocab.txt']
  loaded_config, loaded = mvp_jax.load_checkpoint(out)
  assert loaded_config == config
  want = flat(params)
  for name, value in flat(loaded).items():
    if name != 'backbone/logit_scale':
      np.testing.assert_array_equal(value, want[name], err_msg=name)
  # The same vocabularies pass.
  _, report = weights.load(out, loaded, model_config=config, task=task, vocab_dir=data)
  assert report.source_kind == 'exported'
  # Other words at the same ids are refused, saying what differs.
  swapped = words[:5] + ['what', 'green', 'circle']
  other = write_vocab(tmp_path / 'other', swapped, concepts)
  with pytest.raises(weights.WeightsError,
                     match="id 5 is 'green' in the checkpoint and 'what' in the run"):
    weights.load(out, loaded, model_config=config, task=task, vocab_dir=other)
  other = write_vocab(tmp_path / 'concepts', words, dict(concepts, **{'201': ['square']}))
  with pytest.raises(weights.WeightsError, match=r"1 of 2 rows: row 201 is \['blue'\]"):
    weights.load(out, loaded, model_config=config, task=task, vocab_dir=other)


def test_our_run_directory_and_a_step_folder():
  from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  run = make_run()
  config, params, step = checkpointing.load_trained(run)
  target = jax.tree_util.tree_map(np.zeros_like, jax.device_get(params))
  for source in (run, os.path.join(run, 'checkpoints', str(step))):
    loaded, report = weights.load(source, target, model_config=config)
    assert report.source_kind == 'run' and report.source_task == 'pretrain'
    assert report.fresh == [] and report.skipped == []
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  # Its vocabularies are the run's dataset: the same dataset passes the check.
  weights.load(run, target, model_config=config, vocab_dir=os.path.join(run, 'data'))


def test_a_run_directory_with_other_vocabularies_is_refused(tmp_path):
  """Issue 10 item 16: `init_from` a pre-training run into a dataset whose ids mean other words
  (a custom set built with its own vocabulary) is refused, naming the first differing id."""
  from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  run = make_run()
  config, params, _ = checkpointing.load_trained(run)
  target = jax.tree_util.tree_map(np.zeros_like, jax.device_get(params))
  data = os.path.join(run, 'data')
  with open(os.path.join(data, 'vocab.txt'), encoding='utf-8') as f:
    words = [line.rstrip('\n') for line in f]
  with open(os.path.join(data, 'id2phrase.json'), encoding='utf-8') as f:
    concepts = json.load(f)
  swapped = words[:5] + [words[6], words[5]] + words[7:]  # same size, two ids exchanged
  other = write_vocab(tmp_path / 'custom_vqa', swapped, concepts)
  with pytest.raises(weights.WeightsError,
                     match=f"id 5 is {words[5]!r} in the checkpoint and {words[6]!r} in the run"):
    weights.load(run, target, model_config=config, vocab_dir=other)


def test_abstract_target_needs_everything():
  config = mvp_jax.config.tiny(region_feature_dim=12)
  _, state = pretrain_state(config)
  shapes = nn.unbox(jax.eval_shape(lambda: mvp_jax.init_params(config, jax.random.PRNGKey(0))))
  del state['cls.seq_relationship.bias']
  with pytest.raises(weights.WeightsError, match='itm_head/bias'):
    weights.load(state, shapes, model_config=config)
