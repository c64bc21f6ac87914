"""Zero-shot object tags from SigLIP: label embeddings, sigmoid scores, top-T selection.

A label's probability for an image (or region) embedding x is SigLIP's own sigmoid,
sigmoid(e^t cos(x, label) + b), so one threshold means the same thing for every label. A
label's embedding is the mean of its normalised prompt embeddings (one per template),
renormalised, as big_vision's zero-shot classifier builds it.

Object tags for a record (one string per region, as a detector's classes): each region takes
its best label when that scores >= threshold; only the image's top_t labels (ranked by their best
region score) are kept, the other regions get '' (no tag).
"""

import functools
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LABELS_FILE = os.path.join(os.path.dirname(__file__), 'vg_objects_1600.txt')
DEFAULT_TEMPLATES = ('a photo of a {}.',)


def load_labels(path: Optional[str] = None) -> list[str]:
  """Labels, one a line (default: the 1,600 Visual Genome object classes of the bottom-up
  attention / VinVL-era detectors). Duplicates or blank lines are errors naming the line."""
  path = path or DEFAULT_LABELS_FILE
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  labels, seen = [], {}
  for i, line in enumerate(lines, 1):
    label = line.strip()
    if not label:
      raise ValueError(f'{path}:{i}: blank label.')
    if label in seen:
      raise ValueError(f'{path}:{i}: label {label!r} repeats line {seen[label]}.')
    seen[label] = i
    labels.append(label)
  if not labels:
    raise ValueError(f'{path}: no labels.')
  return labels


def normalise(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def label_embeddings(embed_texts: Callable[[np.ndarray], np.ndarray],
                     tokenize: Callable[[Sequence[str]], np.ndarray], labels: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES,
                     batch_size: int = 256) -> np.ndarray:
  """float32 [L, P] unit label embeddings.

  embed_texts: int ids [B, max_len] -> pooled text embeddings [B, P] (e.g. a jitted TextTower).
  """
  total = np.zeros((len(labels), 0), np.float32)
  for template in templates:
    prompts = [template.format(label) for label in labels]
    chunks = []
    for start in range(0, len(prompts), batch_size):
      ids = tokenize(prompts[start:start + batch_size])
      chunks.append(np.asarray(normalise(jnp.asarray(embed_texts(ids)))))
    emb = np.concatenate(chunks)
    total = emb if total.shape[1] == 0 else total + emb
  return np.asarray(normalise(jnp.asarray(total)))


def label_probs(embeddings: jax.Array, labels: jax.Array, scale: jax.Array,
                bias: jax.Array) -> jax.Array:
  """Sigmoid probabilities [..., L] of embeddings [..., P] for unit label embeddings [L, P]."""
  cos = jnp.einsum('...p,lp->...l', normalise(embeddings), labels.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return jax.nn.sigmoid(scale * cos + bias)


@functools.partial(jax.jit, static_argnames='top_t')
def top_labels(probs: jax.Array, top_t: int, threshold: float) -> tuple[jax.Array, jax.Array,
                                                                        jax.Array]:
  """The top_t labels of each row of probs [..., L]: (index int32, prob, kept bool), [..., T].

  kept is False where the probability is below threshold.
  """
  values, index = jax.lax.top_k(probs, top_t)
  return index.astype(jnp.int32), values, values >= threshold


def region_tags(region_probs: np.ndarray, labels: Sequence[str], top_t: int,
                threshold: float) -> list[str]:
  """One tag per region from probabilities [R, L] (module docstring): '' for no tag."""
  region_probs = np.asarray(region_probs)
  best = region_probs.argmax(axis=1)
  score = region_probs[np.arange(len(best)), best]
  ranked = {}
  for label, s in zip(best.tolist(), score.tolist()):
    if s >= threshold:
      ranked[label] = max(s, ranked.get(label, -1.0))
  kept = set(sorted(ranked, key=lambda k: (-ranked[k], k))[:top_t])
  return [labels[b] if b in kept and s >= threshold else ''
          for b, s in zip(best.tolist(), score.tolist())]
