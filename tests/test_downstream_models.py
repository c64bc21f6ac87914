"""Downstream task models: heads, label conventions, reading sites and torch names (spec §4, §6)."""

import json

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import convert
import ml_collections

from mvp_jax import model as model_lib
from mvp_jax import tasks
from mvp_jax.downstream import models
from mvp_jax.evaluators import retrieval as retrieval_eval

CFG = config_lib.tiny(dropout_rate=0.0, attention_dropout_rate=0.0, num_cross_layers=3)
TEXT, TAGS, REGIONS = 6, 3, 4


def batch(seed=0, batch_size=4, cfg=CFG):
  rng = np.random.default_rng(seed)
  out = dict(model_lib.dummy_batch(cfg, batch_size, TEXT, TAGS, REGIONS))
  out['input_ids_a'] = jnp.asarray(rng.integers(1, cfg.vocab_size, (batch_size, TEXT)), jnp.int32)
  out['input_ids_b'] = jnp.asarray(rng.integers(1, cfg.vocab_size, (batch_size, TAGS)), jnp.int32)
  out['img_feats'] = jnp.asarray(rng.normal(size=(batch_size, REGIONS, cfg.region_feature_dim)),
                                 jnp.float32)
  return out


@pytest.fixture(scope='module')
def inputs():
  return batch()


def init(model, inputs, seed=0):
  return nn.unbox(model.init(jax.random.PRNGKey(seed), inputs)['params'])


def test_retrieval_head_label_one_is_matched(inputs):
  model = models.RetrievalModel(CFG)
  params = init(model, inputs)
  params['classifier']['bias'] = jnp.array([0.0, 30.0])  # everything looks like label 1
  out = model.apply({'params': params}, inputs)
  assert out['match_logits'].shape == (4, 2)
  prob = model.apply({'params': params}, out['pooled_output'],
                     method=models.RetrievalModel.match_probability)
  np.testing.assert_allclose(prob, 1.0, atol=1e-6)
  with_negatives = model.apply({'params': params}, inputs,
                               hard_negatives=(jnp.array([0, 1, 2, 3]), jnp.array([1, 0, 3, 2])))
  assert with_negatives['match_logits'].shape == (8, 2)
  np.testing.assert_allclose(with_negatives['match_logits'][:4], out['match_logits'], atol=1e-5)


def test_pretraining_head_label_zero_is_matched(inputs):
  model = model_lib.MVPPretrainingModel(CFG)
  params = nn.unbox(model_lib.init_params(CFG, jax.random.PRNGKey(0), inputs))
  params['itm_head']['bias'] = jnp.array([30.0, 0.0])  # everything looks like label 0
  pooled = jnp.ones((3, CFG.hidden_size))
  prob = model.apply({'params': params}, pooled,
                     method=retrieval_eval.pretraining_match_probability)
  np.testing.assert_allclose(prob, 1.0, atol=1e-6)


def test_vqa_head_reads_the_cls_state_not_the_pooler(inputs):
  model = models.VQAModel(CFG, num_answers=7)
  params = init(model, inputs)
  out = model.apply({'params': params}, inputs)
  assert out['answer_logits'].shape == (4, 7)
  expected = model.apply({'params': params}, out['cross_sequence_output'][:, 0],
                         method=lambda m, x: m.answer_head(x))
  np.testing.assert_allclose(out['answer_logits'], expected, atol=1e-5)
  from_pooled = model.apply({'params': params}, out['pooled_output'],
                            method=lambda m, x: m.answer_head(x))
  assert not np.allclose(out['answer_logits'], from_pooled, atol=1e-3)
  assert params['answer_head']['decoder'].shape == (7, CFG.hidden_size)


def test_vqa_tag_slot_quirk_widens_the_cross_sequence(inputs):
  quirky = CFG.replace(cross_tag_slots=2)
  model = models.VQAModel(quirky, num_answers=5)
  params = init(model, inputs)
  out = model.apply({'params': params}, inputs)
  assert out['cross_sequence_output'].shape[1] == TEXT + 2 + REGIONS
  clean = models.VQAModel(CFG, num_answers=5).apply({'params': params}, inputs)
  assert clean['cross_sequence_output'].shape[1] == TEXT + REGIONS


def test_ve_head_on_pooled(inputs):
  model = models.VEModel(CFG)
  params = init(model, inputs)
  out = model.apply({'params': params}, inputs)
  expected = out['pooled_output'] @ params['classifier']['kernel'] + params['classifier']['bias']
  np.testing.assert_allclose(out['class_logits'], expected, atol=1e-5)
  assert out['class_logits'].shape == (4, 3)


@pytest.mark.parametrize('phrase_layer', [0, 2])
def test_re_cosine_at_the_phrase_layer(inputs, phrase_layer):
  model = models.REModel(CFG, phrase_layer=phrase_layer)
  params = init(model, inputs)
  out = model.apply({'params': params}, inputs)
  hidden = np.asarray(out['mid_output'])
  cls, regions = hidden[:, :1], hidden[:, TEXT:]
  expected = (regions * cls).sum(-1) / (np.linalg.norm(regions, axis=-1)
                                        * np.linalg.norm(cls, axis=-1))
  np.testing.assert_allclose(out['region_logits'], expected, atol=1e-5)
  assert out['region_logits'].shape == (4, REGIONS)
  if phrase_layer == CFG.num_cross_layers - 1:  # the last index is the final output (§10.3)
    np.testing.assert_allclose(hidden, out['cross_sequence_output'], atol=1e-6)


def create_model(task, cfg, num_answers=None, num_labels=None, phrase_layer=2):
  """The task's model through the task registry, as the trainer builds it."""
  config = ml_collections.ConfigDict(dict(num_labels=num_labels or 0, phrase_layer=phrase_layer))
  if task == 'vqa' and num_answers:
    cfg = cfg.replace(qa_num_answers=num_answers)
  return tasks.get(task).create_model(config, cfg)


def test_create_model_checks_arguments():
  with pytest.raises(ValueError, match='num_answers'):
    create_model('vqa', CFG)
  with pytest.raises(ValueError, match='phrase_layer'):
    create_model('re', CFG, phrase_layer=3)
  with pytest.raises(ValueError, match='Unknown task'):
    create_model('captioning', CFG)


TASK_MODELS = {'retrieval': 'BiImageBertForRetrieval', 'vqa': 'BiImageBertForVQA',
               've': 'BiImageBertForSequenceClassification_VE', 're': 'BiImageBertForRE'}


@pytest.mark.parametrize('task', sorted(TASK_MODELS))
def test_head_names_and_shapes_match_the_reference(reference_dir, task):
  extra = json.loads((reference_dir / 'state_dict_shapes_extra.json').read_text())[
      TASK_MODELS[task]]
  base = config_lib.base()
  model = create_model(task, base, num_answers=3129, num_labels=2 if task == 're' else None)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), model_lib.dummy_batch(base)))
  flat = {k: v.shape for k, v in
          traverse_util.flatten_dict(nn.unbox(shapes['params'])).items()}
  entries = convert.task_entries(task, base)
  assert sum(e.torch_name.startswith('bert.') for e in entries) == extra['_n_bert_keys']
  heads = {e.torch_name: e for e in entries if not e.torch_name.startswith('bert.')}
  assert set(heads) == {k for k in extra if not k.startswith('_')}
  for name, entry in heads.items():
    ours = flat[entry.path]
    torch_shape = ours[::-1] if entry.layout == convert.LINEAR else ours
    assert list(torch_shape) == extra[name], name


@pytest.mark.parametrize('task', sorted(TASK_MODELS))
def test_task_params_round_trip_through_torch_names(inputs, task):
  model = create_model(task, CFG, num_answers=5)
  params = jax.tree_util.tree_map(np.asarray, init(model, inputs))
  entries = convert.task_entries(task, CFG)
  state = convert.params_to_torch(params, CFG, entries)
  back = convert.torch_to_params(state, CFG, entries)
  flat_back = traverse_util.flatten_dict(back)
  flat = traverse_util.flatten_dict(params)
  unconverted = set(flat) - set(flat_back)
  # Only the retrieval model's state dict holds logit_scale (spec §6).
  assert unconverted == (set() if task == 'retrieval' else {('backbone', 'logit_scale')})
  for key, value in flat_back.items():
    np.testing.assert_array_equal(value, flat[key])
