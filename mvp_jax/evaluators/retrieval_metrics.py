"""Pure ranking metrics of image-text retrieval (spec §4.1)."""

from typing import Dict, Sequence

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
