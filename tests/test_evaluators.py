"""`evaluators.from_config` and the per-example evaluators: token accuracy and grounding on
ShapesWorld batches of the pre-training pipeline, VQA / SNLI-VE / RE on hand-built batches whose
targets make the expected values known, uneven host shares, progress logging."""

import json
import logging
import re

import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvp_tiny
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline.shapesworld import build
from mvp_jax import config as config_lib
from mvp_jax import data
from mvp_jax import evaluators
from mvp_jax import losses
from mvp_jax import model as model_lib
from mvp_jax import sharding
from mvp_jax import tasks
from mvp_jax.downstream import losses as task_losses
from mvp_jax.downstream import models
import fake_hosts
from retrieval_fixtures import as_batches

TEXT, TAGS, REGIONS, ROWS, FEATURES = 6, 3, 4, 4, 16
ANSWERS = ['yes', 'no', 'circle', 'red']


@pytest.fixture(scope='module')
def mesh_and_to_device():
  mesh = sharding.create_mesh((2, 1, 1))
  return mesh, lambda b: data.to_global(b, sharding.batch_sharding(mesh))


def context(model, task, batches, to_device, workdir='/nonexistent', calls=None, answers=None):
  def get(split, corrupt):
    if calls is not None:
      calls.append((split, corrupt))
    return batches[split] if isinstance(batches, dict) else batches
  return evaluators.EvalContext(model=model, task=task, batches=get, to_device=to_device,
                                workdir=str(workdir), answers=answers)


def test_from_config_refuses_bad_entries():
  ctx = context(models.VEModel(config_lib.tiny()), 've', [], lambda b: b)
  (ve,) = evaluators.from_config({'ve': dict(type='ve', split='val', every=100)}, ctx)
  assert (ve.name, ve.every, ve.split, ve.metric('accuracy')) == ('ve', 100, 'val',
                                                                  'val/ve/accuracy')
  for entry, message in [
      (dict(type='bleu', split='val'), "type 'bleu' is not one of"),
      (dict(type='ve'), 'no split given'),
      (dict(type='ve', split='val', top_k_images=3), r"unknown option\(s\) \['top_k_images'\]"),
      (dict(type='retrieval', split='val'), "not this run's task 've'"),
      (dict(type='ve', split='val', every=-1), 'every must be >= 0')]:
    with pytest.raises(ValueError, match=message):
      evaluators.from_config({'bad': entry}, ctx)
  with pytest.raises(ValueError, match='leave nothing to do'):
    evaluators.from_config({'v': dict(type='vqa', split='test', score=False)},
                           context(None, 'vqa', [], None, answers=ANSWERS))


# --- Pre-training: token accuracy and grounding on ShapesWorld ---------------------------------
@pytest.fixture(scope='module')
def shapesworld(tmp_path_factory):
  """Val batches (clean and corrupted) of a small ShapesWorld and a tiny model that fits it."""
  directory = build.build_dataset(str(tmp_path_factory.mktemp('sw') / 'data'),
                                  build.config_from_dict(dict(
                                      num_train_images=16, num_val_images=6, feature_dim=FEATURES,
                                      captions_per_image=3)))
  tokenizer, concept_vocab = storage.load_vocabularies(directory)
  lengths = data.lengths(mvp_tiny.get_config('smoke').data)

  def batches(corrupt):
    iterator = pretraining.create_pretraining_iterator(
        directory, 'val', tokenizer=tokenizer, concept_vocab=concept_vocab, lengths=lengths,
        batch_size=8, seed=1, shuffle=False, repeat=False, corrupt=corrupt,
        pad_final_batch=True)
    out = [{k: np.array(v) for k, v in b.items()} for b in iterator]  # writable copies
    out[0]['example_valid'][0] = 0  # a real row (labels, links) that must not count
    return out

  word_vocab, rows = data.vocab_sizes(directory)
  cfg = config_lib.tiny(vocab_size=rows, word_vocab_size=word_vocab, region_feature_dim=FEATURES,
                        num_text_layers=1, num_visual_layers=1, num_cross_layers=1)
  model = model_lib.MVPPretrainingModel(cfg)
  params = nn.unbox(jax.jit(lambda r: model_lib.init_params(cfg, r))(jax.random.PRNGKey(0)))
  return model, params, {True: batches(True), False: batches(False)}


def valid_rows(batches):
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  valid = rows.pop('example_valid').astype(bool)
  return {k: v[valid] for k, v in rows.items() if k != 'example_index'}


def test_token_accuracy_reads_corrupted_batches_and_equals_one_big_batch(shapesworld,
                                                                          mesh_and_to_device):
  model, params, batches = shapesworld
  mesh, to_device = mesh_and_to_device
  calls = []
  ctx = evaluators.EvalContext(
      model=model, task='pretrain', to_device=to_device, workdir='/nonexistent',
      batches=lambda split, corrupt: calls.append((split, corrupt)) or batches[corrupt])
  (evaluator,) = evaluators.from_config({'tokens': dict(type='token_accuracy', split='val',
                                                        prefix='val')}, ctx)
  with jax.set_mesh(mesh):
    results = dict(evaluator.run(params))
  assert calls == [('val', True)]
  rows = valid_rows(batches[True])
  out = jax.jit(model.apply)({'params': params}, rows)
  for name, loss_fn, logits, labels in (
      ('mlm', losses.masked_language_loss, out['mlm_logits'], rows['mlm_labels_a']),
      ('mcr', losses.masked_concept_loss, out['vis_mlm_logits'], rows['mlm_labels_b'])):
    loss, counts = loss_fn(logits, labels)
    assert int(counts['count']) > 0
    assert results[f'val/{name}_accuracy'] == pytest.approx(
        int(counts['correct']) / int(counts['count']), abs=1e-7)
    assert results[f'val/{name}_loss'] == pytest.approx(float(loss), rel=1e-5)
  assert set(results) == {'val/mlm_accuracy', 'val/mlm_loss', 'val/mcr_accuracy',
                          'val/mcr_loss'}


def test_grounding_reads_clean_batches_and_equals_numpy_argmax(shapesworld, mesh_and_to_device):
  model, params, batches = shapesworld
  mesh, to_device = mesh_and_to_device
  calls = []
  (evaluator,) = evaluators.from_config(
      {'grounding': dict(type='grounding', split='val')},
      context(model, 'pretrain', {'val': batches[False]}, to_device, calls=calls))
  with jax.set_mesh(mesh):
    results = dict(evaluator.run(params))
  assert calls == [('val', False)]
  rows = valid_rows(batches[False])
  backbone = jax.jit(lambda p, b: model.apply({'params': p}, b, method=lambda m, x: m.backbone(x)))
  sequence = np.asarray(backbone(params, rows)['cross_sequence_output'])
  length = rows['input_ids_a'].shape[1]
  correct = count = chance = 0
  for b, p in zip(*np.nonzero(rows['phrase_region_links'] >= 0)):
    start, end = rows['img_index'][b] - length
    phrase, regions = sequence[b, p], sequence[b, length + start:length + end]
    cosine = regions @ phrase / np.linalg.norm(regions, axis=-1) / np.linalg.norm(phrase)
    correct += int(np.argmax(cosine) + start == rows['phrase_region_links'][b, p])
    count += 1
    chance += 1 / (end - start)
  assert count > 5
  assert results['val/grounding/grounding_phrases'] == count
  assert results['val/grounding/grounding_accuracy'] == pytest.approx(correct / count)
  assert results['val/grounding/grounding_chance'] == pytest.approx(chance / count)


# --- Tasks: hand-built batches with known answers ----------------------------------------------
def task_rows(n, seed):
  rng = np.random.default_rng(seed)
  return dict(
      input_ids_a=rng.integers(1, 200, (n, TEXT)).astype(np.int32),
      attention_mask_a=np.ones((n, TEXT), np.int32), token_type_ids_a=np.zeros((n, TEXT),
                                                                               np.int32),
      input_ids_b=rng.integers(1, 300, (n, TAGS)).astype(np.int32),
      token_type_ids_b=np.ones((n, TAGS), np.int32),
      attention_mask_b=np.ones((n, TAGS + REGIONS), np.int32),
      img_feats=rng.normal(size=(n, REGIONS, FEATURES)).astype(np.float32),
      phrase_index=np.tile([[1, 2]], (n, 1)).astype(np.int32),
      img_index=np.tile([[TEXT, TEXT + REGIONS]], (n, 1)).astype(np.int32),
      image_index=np.arange(n, dtype=np.int32), example_index=np.arange(n, dtype=np.int64),
      example_valid=np.ones(n, np.int32))


CFG = config_lib.tiny(num_text_layers=1, num_visual_layers=1, num_cross_layers=1,
                      region_feature_dim=FEATURES)


def task_model(task, rows):
  model_cfg = CFG.replace(qa_num_answers=len(ANSWERS)) if task == 'vqa' else CFG
  model = tasks.get(task).create_model(ml_collections.ConfigDict(dict(phrase_layer=0)), model_cfg)
  inputs = {k: v for k, v in rows.items() if k != 'example_index'}
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(3), inputs)['params'])
  out = jax.jit(model.apply)({'params': params}, inputs)
  return model, params, out


def test_vqa_accuracy_loss_and_predictions(tmp_path, mesh_and_to_device):
  mesh, to_device = mesh_and_to_device
  n = 7
  rows = task_rows(n, 0)
  model, params, out = task_model('vqa', rows)
  predicted = np.asarray(out['answer_logits']).argmax(-1)
  assert len(set(predicted.tolist())) > 1  # the predictions file is not one repeated answer
  soft = np.array([1.0, 0.3, 0.6, 0.0, 1.0, 0.9, 0.3], np.float32)
  targets = np.zeros((n, len(ANSWERS)), np.float32)
  targets[np.arange(n), predicted] = soft
  targets[np.arange(n), (predicted + 1) % len(ANSWERS)] = 1.0  # a missed answer scores nothing
  rows.update(answer_targets=targets, question_id=np.arange(n, dtype=np.int64) * 10 + 5)
  val = as_batches(rows)
  assert val[-1]['example_valid'].tolist() == [1, 1, 1, 0]  # row 0 repeated as padding
  test = as_batches(dict(rows, answer_targets=np.zeros_like(targets)))
  ctx = context(model, 'vqa', {'val': val, 'test': test}, to_device, tmp_path, answers=ANSWERS)
  vqa_val, vqa_test = evaluators.from_config(
      {'vqa': dict(type='vqa', split='val'),
       'vqa_test': dict(type='vqa', split='test', score=False, predictions=True)}, ctx)
  with jax.set_mesh(mesh):
    results = dict(vqa_val.run(params))
    test_results = dict(vqa_test.run(params))
  assert results['val/vqa/accuracy'] == pytest.approx(soft.sum() / n)
  expected_loss = np.asarray(task_losses.vqa_loss_per_example(out['answer_logits'], targets))
  assert results['val/vqa/loss'] == pytest.approx(expected_loss.mean(), rel=1e-5)
  assert results['val/vqa/num_questions'] == n
  assert not (tmp_path / 'vqa_predictions_val.json').exists()  # predictions=False
  assert test_results == {'test/vqa_test/num_questions': n}  # no accuracy without answers
  written = json.loads((tmp_path / 'vqa_predictions_test.json').read_text())
  assert written == [{'question_id': 10 * i + 5, 'answer': ANSWERS[p]}
                     for i, p in enumerate(predicted)]


def test_ve_accuracy_per_class(mesh_and_to_device):
  mesh, to_device = mesh_and_to_device
  n = 9
  rows = task_rows(n, 1)
  model, params, out = task_model('ve', rows)
  predicted = np.asarray(out['class_logits']).argmax(-1)
  right = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1], bool)
  rows['label'] = np.where(right, predicted, (predicted + 1) % 3).astype(np.int32)
  (ve,) = evaluators.from_config({'ve': dict(type='ve', split='val')},
                                 context(model, 've', as_batches(rows), to_device))
  with jax.set_mesh(mesh):
    results = dict(ve.run(params))
  assert results['val/ve/accuracy'] == pytest.approx(6 / 9)
  assert results['val/ve/num_examples'] == 9
  for label, name in enumerate(('contradiction', 'neutral', 'entailment')):
    chosen = rows['label'] == label
    if chosen.any():
      assert results[f'val/ve/accuracy_{name}'] == pytest.approx(right[chosen].mean())
    else:
      assert f'val/ve/accuracy_{name}' not in results


def test_re_accuracy_upper_bound_and_chance(mesh_and_to_device):
  mesh, to_device = mesh_and_to_device
  n = 6
  rows = task_rows(n, 2)
  model, params, out = task_model('re', rows)
  iou = np.full((n, REGIONS), 0.1, np.float32)
  iou[:, -1] = -1.0  # a padded region
  logits = np.where(iou >= 0, np.asarray(out['region_logits']), -np.inf)
  predicted = logits.argmax(-1)
  hit = np.array([1, 0, 1, 0, 1, 1], bool)
  iou[np.arange(n), predicted] = np.where(hit, 0.7, 0.2)
  iou[1, (predicted[1] + 1) % (REGIONS - 1)] = 0.6  # reachable but missed
  rows['region_iou'] = iou
  (evaluator,) = evaluators.from_config({'re': dict(type='re', split='testA')},
                                        context(model, 're', as_batches(rows), to_device))
  with jax.set_mesh(mesh):
    results = dict(evaluator.run(params))
  assert results['testA/re/accuracy'] == pytest.approx(4 / 6)
  assert results['testA/re/upper_bound'] == pytest.approx(5 / 6)
  chance = ((iou >= 0.5).sum(-1) / (REGIONS - 1)).mean()
  assert results['testA/re/chance'] == pytest.approx(chance)
  assert results['testA/re/num_expressions'] == 6


def test_uneven_host_shares_and_progress_log(monkeypatch, caplog):
  """Host 0 has 3 batches, host 1 one: both run 3 steps (host 1 two dummy batches) and the
  metrics equal one host's over the union; progress is logged with an ETA."""
  rows = task_rows(13, 4)
  model, params, out = task_model('ve', rows)
  rows['label'] = ((np.asarray(out['class_logits']).argmax(-1) + np.arange(13) % 2) % 3
                   ).astype(np.int32)
  host_batches = [as_batches({k: v[:10] for k, v in rows.items()}),
                  as_batches({k: v[10:] for k, v in rows.items()})]
  assert [len(b) for b in host_batches] == [3, 1]
  hosts = fake_hosts.FakeHosts(2, monkeypatch)
  evals = [evaluators.from_config({'ve': dict(type='ve', split='val')},
                                  context(model, 've', b, hosts.to_device))[0]
           for b in host_batches]
  caplog.set_level(logging.INFO, logger='absl')
  per_host = hosts.run([lambda e=e: dict(e.run(params)) for e in evals])
  assert [len(h) for h in hosts.steps] == [3, 3]
  assert [s[2] for s in hosts.steps[1]] == [3, 0, 0]
  monkeypatch.undo()
  one_host = evaluators.from_config(
      {'ve': dict(type='ve', split='val')},
      context(model, 've', host_batches[0] + host_batches[1],
              lambda b: {k: jnp.asarray(v) for k, v in b.items()}))[0]
  expected = dict(one_host.run(params))
  assert expected['val/ve/accuracy'] == pytest.approx(7 / 13)
  assert per_host == [expected, expected]
  logged = [r.getMessage() for r in caplog.records]
  assert any(re.fullmatch(r've batches: 3/3 steps, elapsed \d+:\d\d, ETA 0:00', m)
             for m in logged), logged
