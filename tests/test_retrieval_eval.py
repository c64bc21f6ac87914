"""Two-stage retrieval evaluation (spec §4.1): rank rules, and equality with brute force."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mvp_jax import config as config_lib
from mvp_jax import data
from mvp_jax import model as model_lib
from mvp_jax import sharding
from mvp_jax.downstream import models
from mvp_jax.evaluators import pretraining
from mvp_jax.evaluators import retrieval
from mvp_jax.evaluators import retrieval_metrics

CFG = config_lib.tiny(num_text_layers=1, num_visual_layers=1, num_cross_layers=1,
                      region_feature_dim=16)
IMAGES, CAPTIONS_PER_IMAGE, TEXT, TAGS, REGIONS, ROWS = 5, 2, 5, 3, 4, 4


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


def make_split():
  """IMAGES images with CAPTIONS_PER_IMAGE captions each, as padded host batches of ROWS."""
  rng = np.random.default_rng(0)
  n = IMAGES * CAPTIONS_PER_IMAGE
  image_of_row = np.repeat(np.arange(IMAGES), CAPTIONS_PER_IMAGE)
  rows = dict(
      input_ids_a=rng.integers(1, CFG.vocab_size, (n, TEXT)).astype(np.int32),
      attention_mask_a=(np.arange(TEXT)[None] < rng.integers(3, TEXT + 1, (n, 1))).astype(
          np.int32),
      token_type_ids_a=np.zeros((n, TEXT), np.int32),
      input_ids_b=rng.integers(1, CFG.vocab_size, (IMAGES, TAGS)).astype(np.int32)[image_of_row],
      token_type_ids_b=np.ones((n, TAGS), np.int32),
      attention_mask_b=np.ones((n, TAGS + REGIONS), np.int32),
      img_feats=rng.normal(size=(IMAGES, REGIONS, CFG.region_feature_dim)).astype(
          np.float32)[image_of_row],
      image_index=image_of_row.astype(np.int32), example_valid=np.ones(n, np.int32))
  order = rng.permutation(n)  # captions of an image are spread over batches
  rows = {k: v[order] for k, v in rows.items()}
  padded = -(-n // ROWS) * ROWS
  rows = {k: np.concatenate([v, np.repeat(v[:1], padded - n, 0)]) for k, v in rows.items()}
  rows['example_valid'][n:] = 0
  return [{k: v[i:i + ROWS] for k, v in rows.items()} for i in range(0, padded, ROWS)]


def brute_force(model, params, batches, prob_fn):
  """p(matched) of every (caption, image) pair by running the full model on each pair."""
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  valid = rows['example_valid'].astype(bool)
  rows = {k: v[valid] for k, v in rows.items()}
  first = {int(i): int(np.flatnonzero(rows['image_index'] == i)[0]) for i in range(IMAGES)}
  captions, images = np.meshgrid(np.arange(len(valid[valid])), np.arange(IMAGES), indexing='ij')
  text_rows, image_rows = captions.reshape(-1), np.array([first[i] for i in images.reshape(-1)])
  pairs = {k: rows[k][text_rows] for k in ('input_ids_a', 'attention_mask_a',
                                           'token_type_ids_a')}
  pairs.update({k: rows[k][image_rows] for k in retrieval.VISUAL_INPUTS})
  pooled = model.apply({'params': params}, pairs,
                       method=lambda m, b: m.backbone(b)['pooled_output'])
  prob = model.apply({'params': params}, pooled, method=prob_fn)
  prob = np.asarray(prob).reshape(captions.shape)
  is_match = rows['image_index'][:, None] == np.arange(IMAGES)[None, :]
  return prob, is_match


@pytest.fixture(scope='module')
def setup():
  mesh = sharding.create_mesh((2, 1, 1))  # rerank chunks are split over 2 data shards
  to_device = lambda b: data.to_global(b, sharding.batch_sharding(mesh))
  return mesh, to_device, make_split()


@pytest.mark.parametrize('pretrained', [False, True])
def test_two_stage_with_k_all_equals_brute_force_itm_ranking(setup, pretrained):
  mesh, to_device, batches = setup
  if pretrained:
    model = model_lib.MVPPretrainingModel(CFG)
    params = nn.unbox(model_lib.init_params(CFG, jax.random.PRNGKey(1)))
    evaluator = pretraining.RetrievalEvaluator(model, lambda: batches, to_device,
                                               top_k=IMAGES * CAPTIONS_PER_IMAGE,
                                               score_batch_size=8)
    prob_fn = retrieval.pretraining_match_probability
  else:
    model = models.RetrievalModel(CFG)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), model_lib.dummy_batch(CFG))['params'])
    params['classifier']['kernel'] = params['classifier']['kernel'] * 50  # spread the scores
    evaluator = retrieval.TwoStageRetrievalEvaluator(
        model, lambda: batches, to_device, top_k_images=IMAGES,
        top_k_texts=IMAGES * CAPTIONS_PER_IMAGE, score_batch_size=8)
    prob_fn = retrieval.finetuned_match_probability
  with jax.set_mesh(mesh):
    ranks = evaluator.ranks(params)
    texts, images = evaluator.encode(params)
  prob, is_match = brute_force(model, params, batches, prob_fn)
  # Evaluation order of captions is the batches' order of valid rows, as in brute_force.
  np.testing.assert_array_equal(images['image_index'], np.arange(IMAGES))
  assert len(texts['embedding']) == IMAGES * CAPTIONS_PER_IMAGE
  np.testing.assert_array_equal(ranks['t2i'], retrieval_metrics.full_ranks(prob, is_match))
  np.testing.assert_array_equal(ranks['i2t'], retrieval_metrics.full_ranks(prob.T, is_match.T))
  assert len(set(np.round(prob.reshape(-1), 5))) > IMAGES  # the ranking is not degenerate


def test_ground_truth_outside_the_top_k_gets_rank_k(setup):
  mesh, to_device, batches = setup
  model = models.RetrievalModel(CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(2), model_lib.dummy_batch(CFG))['params'])
  k = 2
  evaluator = retrieval.TwoStageRetrievalEvaluator(
      model, lambda: batches, to_device, top_k_images=k, top_k_texts=k, score_batch_size=8,
      add_contrastive=True)
  with jax.set_mesh(mesh):
    ranks = evaluator.ranks(params)
    texts, images = evaluator.encode(params)
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
  with jax.set_mesh(mesh):
    results = evaluator.run(params)
  assert results['retrieval/num_images'] == IMAGES
  assert results['retrieval/t2i_R@1'] == np.mean(np.asarray(expected) < 1)
