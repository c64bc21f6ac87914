"""Two-stage retrieval evaluation (spec §4.1): rank rules, equality with brute force, an exact
R@1 = 1.0 case, and uneven per-host shares (simulated hosts, tests/fake_hosts.py)."""

import jax
import numpy as np
import pytest

from mvp_jax import data
from mvp_jax import sharding
from mvp_jax.evaluators import retrieval
from mvp_jax.evaluators import retrieval_metrics
import fake_hosts
from retrieval_fixtures import (CAPTIONS_PER_IMAGE, IMAGES, REGIONS, TEXT, as_batches,
                                make_evaluator, make_model, make_rows, uneven_host_batches)


def test_ranks_on_hand_built_scores():
  scores = np.array([[0.9, 0.8, 0.1, 0.4],    # ground truth (col 1) is 2nd -> rank 1
                     [0.1, 0.2, 0.3, 0.9],    # ground truth (col 3) is 1st -> rank 0
                     [0.5, 0.6, 0.7, 0.8],    # no ground truth among the k candidates -> k
                     [0.9, 0.1, 0.8, 0.7]])   # two ground truths (cols 2, 3): the first counts
  match = np.zeros_like(scores, bool)
  match[0, 1] = match[1, 3] = match[3, 2] = match[3, 3] = True
  ranks = retrieval_metrics.rerank_ranks(scores, match)
  np.testing.assert_array_equal(ranks, [1, 0, 4, 1])
  assert retrieval_metrics.recall_at_k(ranks, (1, 2, 5)) == {1: 0.25, 2: 0.75, 5: 1.0}
  np.testing.assert_array_equal(
      retrieval_metrics.top_k_candidates(scores, 2), [[0, 1], [3, 2], [3, 2], [0, 2]])


def brute_force(model, params, batches, prob_fn, num_images=IMAGES):
  """p(matched) of every (caption, image) pair by running the full model on each pair."""
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  valid = rows['example_valid'].astype(bool)
  rows = {k: v[valid] for k, v in rows.items()}
  first = {int(i): int(np.flatnonzero(rows['image_index'] == i)[0]) for i in range(num_images)}
  captions, images = np.meshgrid(np.arange(len(valid[valid])), np.arange(num_images),
                                 indexing='ij')
  text_rows, image_rows = captions.reshape(-1), np.array([first[i] for i in images.reshape(-1)])
  pairs = {k: rows[k][text_rows] for k in retrieval.TEXT_INPUTS}
  pairs.update({k: rows[k][image_rows] for k in retrieval.VISUAL_INPUTS})
  pooled = model.apply({'params': params}, pairs,
                       method=lambda m, b: m.backbone(b)['pooled_output'])
  prob = model.apply({'params': params}, pooled, method=prob_fn)
  prob = np.asarray(prob).reshape(captions.shape)
  is_match = rows['image_index'][:, None] == np.arange(num_images)[None, :]
  return prob, is_match


@pytest.fixture(scope='module')
def setup():
  mesh = sharding.create_mesh((2, 1, 1))  # rerank chunks are split over 2 data shards
  to_device = lambda b: data.to_global(b, sharding.batch_sharding(mesh))
  return mesh, to_device, as_batches(make_rows())


@pytest.mark.parametrize('task', ['retrieval', 'pretrain'])
def test_two_stage_with_k_all_equals_brute_force_itm_ranking(setup, task):
  mesh, to_device, batches = setup
  model, params = make_model(task)
  calls = []
  evaluator = make_evaluator(model, task, batches, to_device, calls,
                             top_k_images=IMAGES, top_k_texts=IMAGES * CAPTIONS_PER_IMAGE)
  with jax.set_mesh(mesh):
    ranks = evaluator.ranks(params)
    texts, images = evaluator.encode(params)
  assert calls[0] == ('val', False)  # retrieval reads clean batches
  prob_fn = (retrieval.pretraining_match_probability if task == 'pretrain'
             else retrieval.finetuned_match_probability)
  prob, is_match = brute_force(model, params, batches, prob_fn)
  # Evaluation order of captions is the batches' order of valid rows, as in brute_force.
  np.testing.assert_array_equal(images['image_index'], np.arange(IMAGES))
  assert len(texts['embedding']) == IMAGES * CAPTIONS_PER_IMAGE
  np.testing.assert_array_equal(ranks['t2i'], retrieval_metrics.full_ranks(prob, is_match))
  np.testing.assert_array_equal(ranks['i2t'], retrieval_metrics.full_ranks(prob.T, is_match.T))
  assert len(set(np.round(prob.reshape(-1), 5))) > IMAGES  # the ranking is not degenerate


def test_ground_truth_outside_the_top_k_gets_rank_k(setup):
  mesh, to_device, batches = setup
  model, params = make_model('retrieval', seed=2)
  k = 2
  evaluator = make_evaluator(model, 'retrieval', batches, to_device, top_k_images=k,
                             top_k_texts=k, add_contrastive=True)
  with jax.set_mesh(mesh):
    ranks = evaluator.ranks(params)
    texts, images = evaluator.encode(params)
    results = dict(evaluator.run(params))
  prob, is_match = brute_force(model, params, batches, retrieval.finetuned_match_probability)
  similarity = texts['embedding'] @ images['embedding'].T
  candidates = retrieval_metrics.top_k_candidates(similarity, k)
  score = np.take_along_axis(prob + similarity, candidates, 1)
  hit = np.take_along_axis(is_match, candidates, 1)
  expected = [np.flatnonzero(h[np.argsort(-s, kind='stable')])[0] if h.any() else k
              for s, h in zip(score, hit)]
  np.testing.assert_array_equal(ranks['t2i'], expected)
  np.testing.assert_array_equal(ranks['coarse_t2i'],
                                retrieval_metrics.full_ranks(similarity, is_match))
  assert results['val/ret/num_images'] == IMAGES
  assert results['val/ret/num_captions'] == IMAGES * CAPTIONS_PER_IMAGE
  assert results['val/ret/t2i_R@1'] == np.mean(np.asarray(expected) < 1)
  assert set(results) == {f'val/ret/{d}_R@{k}' for d in ('t2i', 'i2t', 'coarse_t2i',
                                                         'coarse_i2t') for k in (1, 5, 10)} | {
                                                             'val/ret/num_images',
                                                             'val/ret/num_captions',
                                                             'val/ret/rsum'}
  np.testing.assert_allclose(results['val/ret/rsum'], 100 * sum(
      results[f'val/ret/{d}_R@{k}'] for d in ('t2i', 'i2t') for k in (1, 5, 10)))


def test_folds_retrieve_each_caption_among_its_folds_images_only(setup):
  """COCO 1k's protocol: with folds=2 over 6 images, k = all, every caption is ranked against
  the 3 images of its own fold and every image against that fold's captions (brute force on the
  fold's submatrix), and R@K is the mean over the folds."""
  mesh, to_device, _ = setup
  model, params = make_model('retrieval')
  batches = as_batches(make_rows(images=6, captions=2, seed=4))
  evaluator = make_evaluator(model, 'retrieval', batches, to_device, top_k_images=6,
                             top_k_texts=12, folds=2)
  with jax.set_mesh(mesh):
    ranks = evaluator.ranks(params)
    texts, _ = evaluator.encode(params)
    results = dict(evaluator.run(params))
  prob, is_match = brute_force(model, params, batches, retrieval.finetuned_match_probability,
                               num_images=6)
  caption_image = texts['image_index']
  expected_t2i, expected_i2t, fold_r1 = [], [], []
  for fold in (np.arange(3), np.arange(3, 6)):
    rows = np.isin(caption_image, fold)
    sub_prob, sub_match = prob[rows][:, fold], is_match[rows][:, fold]
    expected_t2i.append(retrieval_metrics.full_ranks(sub_prob, sub_match))
    expected_i2t.append(retrieval_metrics.full_ranks(sub_prob.T, sub_match.T))
    fold_r1.append(np.mean(expected_t2i[-1] < 1))
  np.testing.assert_array_equal(ranks['t2i'], np.concatenate(expected_t2i))
  np.testing.assert_array_equal(ranks['i2t'], np.concatenate(expected_i2t))
  np.testing.assert_allclose(results['val/ret/t2i_R@1'], np.mean(fold_r1))
  full = retrieval_metrics.full_ranks(prob, is_match)  # over all 6 images: another answer
  assert not np.array_equal(np.sort(full), np.sort(np.concatenate(expected_t2i)))
  with pytest.raises(ValueError, match='do not cut into folds=4'):
    with jax.set_mesh(mesh):
      make_evaluator(model, 'retrieval', batches, to_device, folds=4).ranks(params)


def test_recall_at_1_is_exactly_one_when_images_mirror_their_caption(setup):
  """The visual encoder is tied to the text encoder and each image's tags are its caption's
  words (regions masked out), so an image's embedding is its caption's: R@1 must be 1.0."""
  mesh, to_device, _ = setup
  model, params = make_model('pretrain')
  backbone = params['backbone']
  backbone['visual_encoder'] = backbone['text_encoder']
  backbone['visual_projection'] = backbone['text_projection']
  rows = make_rows(images=6, captions=1, seed=3, tags=TEXT)
  rows.update(input_ids_b=rows['input_ids_a'], token_type_ids_b=rows['token_type_ids_a'],
              attention_mask_b=np.concatenate(
                  [rows['attention_mask_a'], np.zeros((6, REGIONS), np.int32)], 1))
  evaluator = make_evaluator(model, 'pretrain', as_batches(rows), to_device, top_k_images=1,
                             top_k_texts=1, prefix='retrieval')
  with jax.set_mesh(mesh):
    results = dict(evaluator.run(params))
  for direction in ('t2i', 'i2t', 'coarse_t2i', 'coarse_i2t'):
    assert results[f'retrieval/{direction}_R@1'] == 1.0, (direction, results)
  assert results['retrieval/num_images'] == 6


def test_uneven_host_shares_match_one_host(monkeypatch):
  """Host 0 holds captions of every image over 3 batches, host 1 two batches of captions of two
  images only: host 1's new images run out first (today's code passed `[]` to `_stack`: "No
  visual rows to stack."). Both hosts must run the same number of steps, each image must be
  encoded once over the hosts, and the ranks must equal one host's over the union of rows."""
  model, params = make_model('retrieval', seed=4)
  host_batches = uneven_host_batches()
  assert [len(b) for b in host_batches] == [3, 2]
  options = dict(top_k_images=3, top_k_texts=4)

  hosts = fake_hosts.FakeHosts(2, monkeypatch)
  evals = [make_evaluator(model, 'retrieval', b, hosts.to_device, **options)
           for b in host_batches]
  per_host = hosts.run([lambda e=e: e.ranks(params) for e in evals])
  assert [[s[:2] for s in h] for h in hosts.steps] == [[s[:2] for s in hosts.steps[0]]] * 2
  image_rows = sum(s[2] for h in hosts.steps for s in h if 'img_feats' in s[0])
  assert image_rows == 8  # every image encoded once over the two hosts
  monkeypatch.undo()

  one_host = make_evaluator(model, 'retrieval', host_batches[0] + host_batches[1],
                            lambda b: {k: jax.numpy.asarray(v) for k, v in b.items()}, **options)
  expected = one_host.ranks(params)
  for ranks in per_host:
    for name in expected:
      np.testing.assert_array_equal(ranks[name], expected[name], err_msg=name)
  assert len(expected['t2i']) == 8 + 5 and len(expected['i2t']) == 8
