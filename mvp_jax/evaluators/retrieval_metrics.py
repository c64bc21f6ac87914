"""Pure ranking metrics of image-text retrieval (spec §4.1)."""

from typing import Dict, Sequence, Tuple

import numpy as np


def rerank_ranks(candidate_scores: np.ndarray, candidate_is_match: np.ndarray) -> np.ndarray:
  """Rank of the first ground truth among re-scored candidates; k when none is a candidate.

  Args:
    candidate_scores: [queries, k] fine scores of each query's k candidates.
    candidate_is_match: [queries, k] bool, whether each candidate is a ground truth.

  Returns:
    [queries] int ranks in [0, k]; k (the authors' rule: 128 for i2t, 64 for t2i) when no ground
    truth survived the coarse stage.
  """
  scores = np.asarray(candidate_scores)
  match = np.asarray(candidate_is_match, bool)
  if scores.shape != match.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and matches {match.shape} must be equal [Q, k].')
  order = np.argsort(-scores, axis=1, kind='stable')
  sorted_match = np.take_along_axis(match, order, axis=1)
  k = scores.shape[1]
  return np.where(sorted_match.any(1), sorted_match.argmax(1), k)


def full_ranks(scores: np.ndarray, is_match: np.ndarray) -> np.ndarray:
  """Rank of the first ground truth when every item is scored: [queries, items] -> [queries]."""
  return rerank_ranks(scores, is_match)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
  """R@K = fraction of queries whose rank < K."""
  ranks = np.asarray(ranks)
  return {k: float(np.mean(ranks < k)) for k in ks}


def top_k_candidates(similarity: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k highest entries of each row, best first: [rows, items] -> [rows, k]."""
  k = min(k, similarity.shape[1])
  part = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind='stable')
  return np.take_along_axis(part, order, axis=1)


def truth_matrix(caption_meaning: np.ndarray, image_meanings: np.ndarray) -> np.ndarray:
  """[C, I] bool, caption c is true of image i, from the truth columns
  (input_pipeline/true_matches.py): caption_meaning [C] int, image_meanings [I, K] int (-1 pad).
  """
  caption_meaning = np.asarray(caption_meaning)
  image_meanings = np.asarray(image_meanings)
  out = np.zeros((len(caption_meaning), len(image_meanings)), bool)
  for image, ids in enumerate(image_meanings):
    out[:, image] = np.isin(caption_meaning, ids[ids >= 0])
  return out & (caption_meaning >= 0)[:, None]


def chance_recall_at_k(is_match: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
  """R@K of a ranking drawn uniformly at random: per query 1 - C(n - t, K) / C(n, K) with t of
  its n items true; mean over queries. is_match: [queries, items] bool."""
  match = np.asarray(is_match, bool)
  n = match.shape[1]
  true = match.sum(1)
  out = {}
  for k in ks:
    k_eff = min(k, n)
    # C(n - t, K) / C(n, K) = prod_{r < K} (n - t - r) / (n - r), 0 once n - t < K.
    miss = np.ones(len(true))
    for r in range(k_eff):
      miss *= np.clip(n - true - r, 0, None) / (n - r)
    out[k] = float(np.mean(1.0 - miss))
  return out


def own_and_random_pairs(caption_image: np.ndarray, num_images: int, seed: int = 0
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """(caption index [2C], image index [2C]): every caption with its own image, then with an image
  drawn uniformly from the others (fixed seed): the pairs an ITM head trained on random
  negatives sees, to be checked against the truth (a drawn image may be true of the caption)."""
  caption_image = np.asarray(caption_image).reshape(-1)
  if num_images < 2:
    raise ValueError(f'Random ITM pairs need at least 2 images, got {num_images}.')
  shift = np.random.default_rng(seed).integers(1, num_images, size=caption_image.shape)
  captions = np.arange(len(caption_image))
  return (np.concatenate([captions, captions]),
          np.concatenate([caption_image, (caption_image + shift) % num_images]))


def matching_accuracy(probability: np.ndarray, is_true: np.ndarray) -> Dict[str, float]:
  """ITM accuracy on truth-checked pairs: p(matched) > 0.5 against the truth.

  Returns 'accuracy' (balanced: the mean of the accuracies on true and on false pairs, chance
  0.5 whatever the mix; the one there is when a kind is missing), 'true_accuracy',
  'false_accuracy', 'true_pairs', 'false_pairs'.
  """
  probability = np.asarray(probability).reshape(-1)
  is_true = np.asarray(is_true, bool).reshape(-1)
  predicted = probability > 0.5
  true_acc = float(predicted[is_true].mean()) if is_true.any() else 0.0
  false_acc = float((~predicted[~is_true]).mean()) if (~is_true).any() else 0.0
  present = [a for a, has in ((true_acc, is_true.any()), (false_acc, (~is_true).any())) if has]
  return {'accuracy': float(np.mean(present)) if present else 0.0, 'true_accuracy': true_acc,
          'false_accuracy': false_acc, 'true_pairs': float(is_true.sum()),
          'false_pairs': float((~is_true).sum())}
