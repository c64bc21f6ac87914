"""Task models: the MVPTR backbone plus one small head per downstream task (spec §4, §1.8).

Every model keeps the backbone under the `backbone` key, exactly as `MVPPretrainingModel` does, so
initialising from a pre-training run is a copy of that subtree. The task modules
(`mvp_jax/tasks/`) build these models.

ITM label conventions (spec §9). Pre-training's `itm_head` (`cls.seq_relationship`) uses label
0 = matched; retrieval's `classifier` uses label **1 = matched**. Both models expose the matching
probability under one name, `match_probability(pooled) -> [N]`, which reads p(label 0) from the
pre-training head and p(label 1) from the retrieval head, so the two-stage evaluator never deals
with the conventions itself.

Shapes: B batch, La text length, T tag length, R regions, H hidden, C answers / classes.
"""

from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvp_jax import layers
from mvp_jax import negatives
from mvp_jax import sharding
from mvp_jax.config import ModelConfig
from mvp_jax.model import MVPBackbone

Array = jax.Array
Batch = Dict[str, Array]

RETRIEVAL_MATCHED_LABEL = 1
PRETRAINING_MATCHED_LABEL = 0


def cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """`F.cosine_similarity` over the last axis (each norm clamped at eps); broadcasts."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  norm_a = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  norm_b = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return jnp.sum(a * b, axis=-1) / (norm_a * norm_b)


class RetrievalModel(nn.Module):
  """`BiImageBertForRetrieval`: backbone + `classifier` Linear H→2 (label 1 = matched)."""
  config: ModelConfig

  def setup(self):
    self.backbone = MVPBackbone(self.config)
    self.classifier = layers.dense(self.config, 2, ('embed_out', 'classes'), 'classifier')
    self.dropout = nn.Dropout(self.config.dropout_rate)

  def match_probability(self, pooled: Array) -> Array:
    """[N, H] pooled outputs -> [N] p(matched) = softmax(classifier)[:, 1] (eval, no dropout)."""
    logits = self.classifier(pooled).astype(jnp.float32)
    return jax.nn.softmax(logits, axis=-1)[:, RETRIEVAL_MATCHED_LABEL]

  def __call__(self, batch: Batch, deterministic: bool = True, hard_negatives: Any = None,
               negative_groups: int = 1) -> Dict[str, Array]:
    """Backbone outputs plus the matching logits.

    Args:
      batch: model inputs (`input_pipeline/features.py`), one positive pair per row.
      deterministic: disables dropout.
      hard_negatives: None (positives only), a PRNG key to mine one hardest in-group negative per
        row as in pre-training (spec §2.5), or a given (txt_index [B], img_index [B]) pair.
      negative_groups: contiguous groups that mine among themselves (1 = the global batch).

    Returns:
      The backbone outputs and match_logits: [B, 2] without negatives, [2B, 2] (positives then
      negatives: `classifier(dropout(cat(pooled, hard_pooled)))`) with them.
    """
    outputs = self.backbone(batch, deterministic)
    pooled = outputs['pooled_output']
    if hard_negatives is not None:
      if isinstance(hard_negatives, (tuple, list)):
        txt_index, img_index = (jnp.asarray(i, jnp.int32) for i in hard_negatives)
      else:
        txt_index, img_index = negatives.mine_hard_negatives(
            hard_negatives, outputs['sim_mat'], negative_groups)
      regions, region_mask = self.backbone.region_slots(
          outputs['vis_encoder_output'], batch['attention_mask_b'], batch['input_ids_b'].shape[1])
      # Group-local takes: a negative stays on its positive's shard (no all-gather).
      take = lambda x, index: sharding.take_within_groups(x, index, negative_groups)
      _, hard_pooled, _ = self.backbone.encode_cross(
          take(outputs['txt_encoder_output'], txt_index),
          take(batch['attention_mask_a'], txt_index), take(regions, img_index),
          take(region_mask, img_index), deterministic)
      pooled = jnp.concatenate([pooled, hard_pooled], axis=0)
      outputs.update(hard_txt_index=txt_index, hard_img_index=img_index)
    pooled = self.dropout(pooled, deterministic=deterministic)
    outputs['match_logits'] = self.classifier(pooled).astype(jnp.float32)
    return outputs


class VQAModel(nn.Module):
  """`BiImageBertForVQA`: `cls.predictions`-shaped answer head on dropout(seq_cross[:, 0]).

  The head is Dense H→H + GELU + LayerNorm, then `x @ decoderᵀ + bias` with decoder [C, H] — the
  MLM head's shape with C answers instead of words, so its transform can be initialised from the
  pre-trained MLM head (`config.vqa_init_from_mlm`). It reads the raw text [CLS] state,
  not the pooler (spec §4.2). `config.cross_tag_slots=10` reproduces the authors' tag-slot quirk
  (spec §10.1); 0 is the clean default.
  """
  config: ModelConfig
  num_answers: int

  def setup(self):
    self.backbone = MVPBackbone(self.config)
    self.answer_head = layers.PredictionHead(self.config, self.num_answers, axis='classes')
    self.dropout = nn.Dropout(self.config.dropout_rate)

  def __call__(self, batch: Batch, deterministic: bool = True) -> Dict[str, Array]:
    """Backbone outputs plus answer_logits [B, C]."""
    outputs = self.backbone(batch, deterministic)
    cls_state = self.dropout(outputs['cross_sequence_output'][:, 0], deterministic=deterministic)
    outputs['answer_logits'] = self.answer_head(cls_state)
    return outputs


class VEModel(nn.Module):
  """`BiImageBertForSequenceClassification` (SNLI-VE): `classifier` Linear H→3 on dropout(pooled).

  Labels: contradiction 0, neutral 1, entailment 2 (spec §4.3).
  """
  config: ModelConfig
  num_labels: int = 3

  def setup(self):
    self.backbone = MVPBackbone(self.config)
    self.classifier = layers.dense(self.config, self.num_labels, ('embed_out', 'classes'),
                                   'classifier')
    self.dropout = nn.Dropout(self.config.dropout_rate)

  def __call__(self, batch: Batch, deterministic: bool = True) -> Dict[str, Array]:
    """Backbone outputs plus class_logits [B, num_labels]."""
    outputs = self.backbone(batch, deterministic)
    pooled = self.dropout(outputs['pooled_output'], deterministic=deterministic)
    outputs['class_logits'] = self.classifier(pooled).astype(jnp.float32)
    return outputs


class REModel(nn.Module):
  """`BiImageBertForRE` with `mod=1`: cosine of [CLS] and each region at a middle cross layer.

  h = dropout(output of cross layer `phrase_layer`, 0-based); logit_r = cos(h[:, La + s + r],
  h[:, 0]) where s = `config.cross_tag_slots` (0 by default). `classifier` (Linear H→num_labels)
  exists only so that the authors' RE checkpoints convert both ways; `mod=1` never uses it, and
  `run_re.py` builds it with num_labels=1 (spec §10.2).
  """
  config: ModelConfig
  phrase_layer: int = 2
  num_labels: int = 1

  def setup(self):
    self.backbone = MVPBackbone(self.config)
    self.classifier = layers.dense(self.config, self.num_labels, ('embed_out', 'classes'),
                                   'classifier')
    self.dropout = nn.Dropout(self.config.dropout_rate)

  def __call__(self, batch: Batch, deterministic: bool = True) -> Dict[str, Array]:
    """Backbone outputs plus region_logits [B, R] (cosines in [-1, 1]) and mid_output."""
    outputs = self.backbone(batch, deterministic, return_layer=self.phrase_layer)
    if self.is_initializing():
      self.classifier(outputs['pooled_output'])
    hidden = self.dropout(outputs['mid_output'], deterministic=deterministic)
    start = batch['input_ids_a'].shape[1] + self.config.cross_tag_slots
    regions = hidden[:, start:]
    outputs['region_logits'] = cosine(regions, hidden[:, :1])
    return outputs
