"""Phrase grounding accuracy of the pre-training model on clean validation batches.

For every phrase with a gold region link: is the region whose cross-modal output has the highest
cosine with the phrase's cross-modal output the gold one? Also reports chance (the mean of
1 / #regions over the linked phrases) and the number of linked phrases.
"""

from typing import Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

from mvp_jax import losses
from mvp_jax.evaluators import base

Array = jax.Array


def predicted_regions(model, params, batch: Mapping[str, Array]) -> Tuple[Array, Array]:
  """(region slot whose cross-modal output has the highest cosine with each text position's
  [B, La] int, real-region mask [B, R] bool) of the pre-training `model` on `batch`."""
  out = model.apply({'params': params}, batch, method=lambda m, b: m.backbone(b))
  sequence = out['cross_sequence_output'].astype(jnp.float32)  # [B, La + R, H]
  text_length = batch['input_ids_a'].shape[1]
  unit = sequence / jnp.maximum(jnp.linalg.norm(sequence, axis=-1, keepdims=True), 1e-12)
  text, regions = unit[:, :text_length], unit[:, text_length:]
  cosine = jnp.einsum('bph,brh->bpr', text, regions)  # [B, La, R]
  region_mask = losses.span_mask(batch['img_index'] - text_length, regions.shape[1])
  cosine = jnp.where(region_mask[:, None, :], cosine, -jnp.inf)
  return jnp.argmax(cosine, axis=-1), region_mask


class GroundingEvaluator(base.RowEvaluator):
  """`type='grounding'`: argmax-cosine phrase -> region accuracy (pre-training only)."""
  tasks = ('pretrain',)
  corrupt = False

  def rows(self, params, batch: Mapping[str, Array]) -> Dict[str, Array]:
    predicted, region_mask = predicted_regions(self.context.model, params, batch)
    links = batch['phrase_region_links']  # [B, La], gold region slot or -1
    linked = links >= 0
    correct = linked & (predicted == links)
    chance = jnp.where(linked, 1.0 / jnp.maximum(region_mask.sum(-1), 1)[:, None], 0.0)
    return dict(correct=correct.sum(-1), count=linked.sum(-1), chance=chance.sum(-1))

  def summarize(self, values) -> Dict[str, float]:
    count = float(values['count'].sum())
    return {'grounding_accuracy': float(values['correct'].sum()) / max(count, 1.0),
            'grounding_chance': float(values['chance'].sum()) / max(count, 1.0),
            'grounding_phrases': count}
