"""Evaluators run during pre-training on a validation split (e.g. ShapesWorld val).

- `RetrievalEvaluator`: zero-shot two-stage retrieval (`evaluators/retrieval.py`). Every caption
  and every image is encoded once by the uni-modal encoders; all pairs are ranked by contrastive
  similarity; the top-k of each query are re-scored by the ITM head (pre-training label 0 =
  matched, so the score is p(label 0)); text→image and image→text R@1/5/10 with the authors' rule
  that a query whose ground truth is not among its k candidates gets rank k.
- `TokenAccuracyEvaluator`: MLM (cross-modal, words) and MCR (visual encoder, tags) accuracy on
  deterministically corrupted validation batches.
- `GroundingEvaluator`: for every phrase with a gold region link, is the region with the highest
  cosine to the phrase's cross-modal output the gold one? Also reports chance (mean 1/#regions).

All share `run(params) -> {name: float}`.
"""

from typing import Callable, Dict, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import losses
from mvp_jax.evaluators import retrieval

Batch = Mapping[str, np.ndarray]


to_host = retrieval.to_host


class _Evaluator:
  """Holds the model, the validation batches and how to place a host batch on the mesh."""

  def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Batch]],
               to_device: Callable[[Batch], Batch] = lambda b: b):
    self.model = model
    self.batches = batches
    self.to_device = to_device

  def _valid(self, batch: Batch) -> np.ndarray:
    return np.asarray(batch['example_valid']).astype(bool)


class RetrievalEvaluator(retrieval.TwoStageRetrievalEvaluator):
  """Zero-shot two-stage retrieval with the pre-training ITM head (p(label 0) = matched).

  The shared two-stage code is `evaluators/retrieval.py`; here both directions re-score the same
  `top_k` candidates.
  """

  def __init__(self, model, batches, to_device=lambda b: b, top_k: int = 16,
               add_contrastive: bool = False, score_batch_size: int = 64, ks=(1, 5, 10),
               prefix: str = 'retrieval'):
    super().__init__(model, batches, to_device,
                     match_probability=retrieval.pretraining_match_probability,
                     top_k_images=top_k, top_k_texts=top_k, add_contrastive=add_contrastive,
                     score_batch_size=score_batch_size, ks=ks, prefix=prefix)


class TokenAccuracyEvaluator(_Evaluator):
  """MLM and MCR accuracy (and loss) on corrupted validation batches."""

  def __init__(self, model, batches, to_device=lambda b: b, prefix: str = 'val'):
    super().__init__(model, batches, to_device)
    self.prefix = prefix

    def counts(params, batch):
      out = model.apply({'params': params}, batch)
      valid = batch['example_valid'][:, None].astype(bool)
      labels_a = jnp.where(valid, batch['mlm_labels_a'], -1)
      labels_b = jnp.where(valid, batch['mlm_labels_b'], -1)
      mlm_loss, mlm = losses.masked_language_loss(out['mlm_logits'], labels_a)
      mcr_loss, mcr = losses.masked_concept_loss(out['vis_mlm_logits'], labels_b)
      return dict(mlm_correct=mlm['correct'], mlm_count=mlm['count'],
                  mlm_loss_sum=mlm_loss * mlm['count'], mcr_correct=mcr['correct'],
                  mcr_count=mcr['count'], mcr_loss_sum=mcr_loss * mcr['count'])

    self._counts = jax.jit(counts)

  def run(self, params) -> Dict[str, float]:
    totals: Dict[str, float] = {}
    for batch in self.batches():
      for k, v in self._counts(params, self.to_device(batch)).items():
        totals[k] = totals.get(k, 0.0) + float(to_host(v))
    results = {}
    for name in ('mlm', 'mcr'):
      count = max(totals.get(f'{name}_count', 0.0), 1.0)
      results[f'{self.prefix}/{name}_accuracy'] = totals.get(f'{name}_correct', 0.0) / count
      results[f'{self.prefix}/{name}_loss'] = totals.get(f'{name}_loss_sum', 0.0) / count
    return results


class GroundingEvaluator(_Evaluator):
  """Accuracy of phrase -> region grounding (argmax cosine) against gold links."""

  def __init__(self, model, batches, to_device=lambda b: b, prefix: str = 'val'):
    super().__init__(model, batches, to_device)
    self.prefix = prefix

    def counts(params, batch):
      out = model.apply({'params': params}, batch,
                        method=lambda m, b: m.backbone(b))
      sequence = out['cross_sequence_output'].astype(jnp.float32)
      text_length = batch['input_ids_a'].shape[1]
      unit = sequence / jnp.maximum(jnp.linalg.norm(sequence, axis=-1, keepdims=True), 1e-12)
      text, regions = unit[:, :text_length], unit[:, text_length:]
      cosine = jnp.einsum('bph,brh->bpr', text, regions)
      region_mask = losses.span_mask(batch['img_index'] - text_length, regions.shape[1])
      cosine = jnp.where(region_mask[:, None, :], cosine, -jnp.inf)
      links = batch['phrase_region_links']
      linked = (links >= 0) & batch['example_valid'][:, None].astype(bool)
      correct = linked & (jnp.argmax(cosine, axis=-1) == links)
      chance = jnp.where(linked, 1.0 / jnp.maximum(region_mask.sum(-1), 1)[:, None], 0.0)
      return dict(correct=correct.sum(), count=linked.sum(), chance=chance.sum())

    self._counts = jax.jit(counts)

  def run(self, params) -> Dict[str, float]:
    totals = {'correct': 0.0, 'count': 0.0, 'chance': 0.0}
    for batch in self.batches():
      for k, v in self._counts(params, self.to_device(batch)).items():
        totals[k] += float(to_host(v))
    count = max(totals['count'], 1.0)
    return {f'{self.prefix}/grounding_accuracy': totals['correct'] / count,
            f'{self.prefix}/grounding_chance': totals['chance'] / count,
            f'{self.prefix}/grounding_phrases': totals['count']}
