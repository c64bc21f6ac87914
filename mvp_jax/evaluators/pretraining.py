"""Evaluators run during pre-training on a validation split (e.g. ShapesWorld val).

- `RetrievalEvaluator`: zero-shot two-stage retrieval. Every caption and every image is encoded
  once by the uni-modal encoders; all pairs are ranked by contrastive similarity; the top-k of
  each query are re-scored by the ITM head (pre-training label 0 = matched, so the score is
  p(label 0)); text→image and image→text R@1/5/10 with the authors' rule that a query whose
  ground truth is not among its k candidates gets rank k.
- `TokenAccuracyEvaluator`: MLM (cross-modal, words) and MCR (visual encoder, tags) accuracy on
  deterministically corrupted validation batches.
- `GroundingEvaluator`: for every phrase with a gold region link, is the region with the highest
  cosine to the phrase's cross-modal output the gold one? Also reports chance (mean 1/#regions).

All share `run(params) -> {name: float}`.
"""

from typing import Callable, Dict, Iterable, List, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mvp_jax import losses
from mvp_jax.evaluators import retrieval_metrics

Batch = Mapping[str, np.ndarray]


def to_host(x) -> np.ndarray:
  """A (possibly globally sharded) array as numpy on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class _Evaluator:
  """Holds the model, the validation batches and how to place a host batch on the mesh."""

  def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Batch]],
               to_device: Callable[[Batch], Batch] = lambda b: b):
    self.model = model
    self.batches = batches
    self.to_device = to_device

  def _valid(self, batch: Batch) -> np.ndarray:
    return np.asarray(batch['example_valid']).astype(bool)


class RetrievalEvaluator(_Evaluator):
  """Zero-shot two-stage retrieval on (image, caption) pairs grouped by `image_index`."""

  def __init__(self, model, batches, to_device=lambda b: b, top_k: int = 16,
               score_batch_size: int = 64, ks=(1, 5, 10), prefix: str = 'retrieval'):
    super().__init__(model, batches, to_device)
    self.top_k, self.score_batch_size, self.ks, self.prefix = top_k, score_batch_size, ks, prefix

    def unimodal(params, batch):
      out = model.apply({'params': params}, batch, run_cross=False,
                        method=lambda m, b, **k: m.backbone(b, **k))
      regions, region_mask = model.apply(
          {'params': params}, out['vis_encoder_output'], batch['attention_mask_b'],
          batch['input_ids_b'].shape[1],
          method=lambda m, *a: m.backbone.region_slots(*a))
      return dict(text_embedding=out['text_embedding'],
                  visual_embedding=out['visual_embedding'],
                  text_sequence=out['txt_encoder_output'], regions=regions,
                  region_mask=region_mask)

    def match_probability(params, text_sequence, text_mask, regions, region_mask):

      def fn(m):
        _, pooled, _ = m.backbone.encode_cross(text_sequence, text_mask, regions, region_mask)
        return jax.nn.softmax(m.itm_head(pooled).astype(jnp.float32), axis=-1)[:, 0]

      return model.apply({'params': params}, method=fn)

    self._unimodal = jax.jit(unimodal)
    self._match_probability = jax.jit(match_probability)

  def encode(self, params):
    """One pass: per caption its embedding/sequence/mask/image; per image its regions."""
    texts: Dict[str, List[np.ndarray]] = {k: [] for k in ('emb', 'seq', 'mask', 'image')}
    images: Dict[int, tuple] = {}
    for batch in self.batches():
      valid = self._valid(batch)
      out = {k: to_host(v) for k, v in self._unimodal(params, self.to_device(batch)).items()}
      image_index = np.asarray(batch['image_index'])
      texts['emb'].append(out['text_embedding'][valid])
      texts['seq'].append(out['text_sequence'][valid])
      texts['mask'].append(np.asarray(batch['attention_mask_a'])[valid])
      texts['image'].append(image_index[valid])
      for row in np.flatnonzero(valid):
        images.setdefault(int(image_index[row]), (out['visual_embedding'][row],
                                                  out['regions'][row], out['region_mask'][row]))
    texts = {k: np.concatenate(v) for k, v in texts.items()}
    image_ids = np.array(sorted(images))
    image_emb, regions, region_mask = (np.stack([images[i][j] for i in image_ids])
                                       for j in range(3))
    return texts, image_ids, image_emb, regions, region_mask

  def _score_pairs(self, params, text_rows, image_rows, texts, regions, region_mask):
    """ITM match probability of (caption text_rows[i], image image_rows[i]) pairs, in chunks."""
    scores = []
    size = self.score_batch_size
    for start in range(0, len(text_rows), size):
      t = text_rows[start:start + size]
      v = image_rows[start:start + size]
      pad = size - len(t)  # static shapes: pad the last chunk by repeating row 0
      t = np.concatenate([t, np.zeros(pad, t.dtype)])
      v = np.concatenate([v, np.zeros(pad, v.dtype)])
      probability = self._match_probability(params, texts['seq'][t], texts['mask'][t],
                                            regions[v], region_mask[v])
      scores.append(to_host(probability)[:size - pad])
    return np.concatenate(scores)

  def run(self, params) -> Dict[str, float]:
    texts, image_ids, image_emb, regions, region_mask = self.encode(params)
    caption_image = np.searchsorted(image_ids, texts['image'])  # column of each caption's image
    similarity = texts['emb'] @ image_emb.T  # [captions, images]
    is_match = caption_image[:, None] == np.arange(len(image_ids))[None, :]
    # Text -> image: each caption's top-k images.
    k_images = min(self.top_k, len(image_ids))
    t2i_candidates = retrieval_metrics.top_k_candidates(similarity, k_images)
    rows = np.repeat(np.arange(len(caption_image)), k_images)
    t2i_scores = self._score_pairs(params, rows, t2i_candidates.reshape(-1), texts, regions,
                                   region_mask).reshape(t2i_candidates.shape)
    t2i_ranks = retrieval_metrics.rerank_ranks(
        t2i_scores, np.take_along_axis(is_match, t2i_candidates, 1))
    # Image -> text: each image's top-k captions.
    k_texts = min(self.top_k, len(caption_image))
    i2t_candidates = retrieval_metrics.top_k_candidates(similarity.T, k_texts)
    columns = np.repeat(np.arange(len(image_ids)), k_texts)
    i2t_scores = self._score_pairs(params, i2t_candidates.reshape(-1), columns, texts, regions,
                                   region_mask).reshape(i2t_candidates.shape)
    i2t_ranks = retrieval_metrics.rerank_ranks(
        i2t_scores, np.take_along_axis(is_match.T, i2t_candidates, 1))
    coarse_t2i = retrieval_metrics.full_ranks(similarity, is_match)
    coarse_i2t = retrieval_metrics.full_ranks(similarity.T, is_match.T)
    results = {}
    for name, ranks in (('t2i', t2i_ranks), ('i2t', i2t_ranks), ('coarse_t2i', coarse_t2i),
                        ('coarse_i2t', coarse_i2t)):
      for k, value in retrieval_metrics.recall_at_k(ranks, self.ks).items():
        results[f'{self.prefix}/{name}_R@{k}'] = value
    results[f'{self.prefix}/num_images'] = float(len(image_ids))
    results[f'{self.prefix}/num_captions'] = float(len(caption_image))
    return results


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
