"""Truth-aware retrieval metrics (mvp_jax/evaluators/retrieval_metrics.py) on matrices whose
answers are known."""

import math

import numpy as np

from mvp_jax.evaluators import retrieval_metrics as rm

# 4 captions x 3 images. Caption 0 belongs to image 0 but is also true of image 2; caption 2
# ("there are two shapes") is true of every image.
TRUTH = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
OWN = np.array([0, 1, 1, 2])
SIM = np.array([[0.1, 0.0, 0.9],   # best image 2: wrong for the own image, true of it
                [0.2, 0.8, 0.3],
                [0.7, 0.2, 0.1],   # best image 0: a true hit
                [0.5, 0.4, 0.3]])  # best image 0 (false), own image 2 ranked 2


def test_truth_aware_recall_counts_any_true_image_or_caption():
  own = OWN[:, None] == np.arange(3)[None]
  t2i = rm.full_ranks(SIM, own)
  truth_t2i = rm.full_ranks(SIM, TRUTH)
  np.testing.assert_array_equal(t2i, [1, 0, 1, 2])
  np.testing.assert_array_equal(truth_t2i, [0, 0, 0, 2])
  assert rm.recall_at_k(truth_t2i, (1,))[1] == 0.75
  assert rm.recall_at_k(t2i, (1,))[1] == 0.25
  # i2t: image 0's best caption is 2 (true); image 1's is 1; image 2's is 0 (true of it).
  np.testing.assert_array_equal(rm.full_ranks(SIM.T, TRUTH.T), [0, 0, 0])


def test_truth_matrix_from_the_columns():
  caption_meaning = np.array([5, 7, -1])
  image_meanings = np.array([[5, 7], [7, -1], [-1, -1]])
  np.testing.assert_array_equal(rm.truth_matrix(caption_meaning, image_meanings),
                                [[1, 0, 0], [1, 1, 0], [0, 0, 0]])


def test_chance_recall():
  chance = rm.chance_recall_at_k(TRUTH, (1, 2, 5))
  # R@1: mean of t / n; R@2: 1 - C(n - t, 2) / C(3, 2); R@5 covers every image.
  np.testing.assert_allclose(chance[1], np.mean([2 / 3, 1 / 3, 1, 1 / 3]))
  r2 = [1 - math.comb(3 - t, 2) / 3 for t in TRUTH.sum(1)]
  np.testing.assert_allclose(chance[2], np.mean(r2))
  assert chance[5] == 1.0


def test_matching_accuracy_is_balanced():
  out = rm.matching_accuracy(np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3]),
                             np.array([1, 1, 1, 0, 0, 0], bool))
  np.testing.assert_allclose(out['true_accuracy'], 2 / 3)
  np.testing.assert_allclose(out['false_accuracy'], 2 / 3)
  np.testing.assert_allclose(out['accuracy'], 2 / 3)
  always_yes = rm.matching_accuracy(np.ones(10), np.arange(10) < 1)  # 1 true pair, 9 false
  assert always_yes['accuracy'] == 0.5 and always_yes['true_pairs'] == 1


def test_own_and_random_pairs_give_each_caption_its_image_and_another():
  own = np.array([0, 0, 1, 2, 2, 2, 3])
  texts, images = rm.own_and_random_pairs(own, 4, seed=3)
  np.testing.assert_array_equal(texts, np.concatenate([np.arange(7), np.arange(7)]))
  np.testing.assert_array_equal(images[:7], own)
  assert (images[7:] != own).all() and ((images[7:] >= 0) & (images[7:] < 4)).all()
  # uniform over the other images: over many draws every other image comes up about equally
  _, many = rm.own_and_random_pairs(np.zeros(30000, int), 4, seed=0)
  np.testing.assert_allclose(np.bincount(many[30000:], minlength=4)[1:] / 30000, 1 / 3, atol=0.01)
  assert np.bincount(many[30000:], minlength=4)[0] == 0
