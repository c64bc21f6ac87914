"""The MVPTR backbone (`BiBertImgModel`) and the pre-training model (`BiBertImgForPreTraining`).

`MVPBackbone` holds everything shared by pre-training and the downstream tasks: embeddings, the
text / visual / cross-modal encoders, the pooler, the contrastive projections and the learnable
logit scale. `MVPPretrainingModel` adds the MLM, concept (tag) and ITM heads and produces every
output the five pre-training losses need (`losses.py`). Downstream models wrap the same backbone.

Shapes: B batch, La text length, T tag length, R regions, H hidden, V word vocabulary.
"""

from typing import Any, Dict, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mvp_jax import layers
from mvp_jax import negatives
from mvp_jax.config import ModelConfig

Array = jax.Array
Batch = Dict[str, Array]


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """`F.normalize`: x / max(||x||, eps) over the last axis."""
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.maximum(norm, eps)


class MVPBackbone(nn.Module):
  """Uni-modal text and visual encoders feeding a cross-modal encoder (spec §1.2–§1.5)."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.embeddings = layers.Embeddings(cfg)
    self.region_embedding = layers.RegionEmbedding(cfg)
    self.text_encoder = layers.Encoder(cfg, cfg.num_text_layers)
    self.visual_encoder = layers.Encoder(cfg, cfg.num_visual_layers)
    self.cross_encoder = layers.Encoder(cfg, cfg.num_cross_layers)
    self.pooler = layers.Pooler(cfg)
    proj_init = nn.with_logical_partitioning(
        nn.initializers.normal(cfg.hidden_size ** -0.5), ('embed', 'embed_out'))
    self.text_projection = self.param('text_projection', proj_init,
                                      (cfg.hidden_size, cfg.hidden_size), jnp.float32)
    self.visual_projection = self.param('visual_projection', proj_init,
                                        (cfg.hidden_size, cfg.hidden_size), jnp.float32)
    self.logit_scale = self.param(
        'logit_scale',
        nn.with_logical_partitioning(nn.initializers.constant(cfg.logit_scale_init), ()),
        (), jnp.float32)

  def encode_text(self, batch: Batch, deterministic: bool = True) -> Array:
    """input_ids_a / token_type_ids_a / attention_mask_a [B, La] -> text sequence [B, La, H]."""
    x = self.embeddings(batch['input_ids_a'], batch['token_type_ids_a'], deterministic)
    out, _ = self.text_encoder(x, batch['attention_mask_a'], deterministic)
    return out

  def encode_visual(self, batch: Batch, deterministic: bool = True) -> Array:
    """Tags [B, T] + img_feats [B, R, D] with attention_mask_b [B, T+R] -> [B, T+R, H]."""
    tags = self.embeddings(batch['input_ids_b'], batch['token_type_ids_b'], deterministic)
    regions = self.region_embedding(batch['img_feats'], deterministic)
    x = jnp.concatenate([tags, regions.astype(tags.dtype)], axis=1)
    if x.shape[1] != batch['attention_mask_b'].shape[1]:
      raise ValueError(f'attention_mask_b has length {batch["attention_mask_b"].shape[1]} but '
                       f'tags + regions give {x.shape[1]}.')
    out, _ = self.visual_encoder(x, batch['attention_mask_b'], deterministic)
    return out

  def contrastive_embeddings(self, text_sequence: Array, visual_sequence: Array):
    """L2-normalised [CLS] projections (no bias, no transpose): ([B, H] text, [B, H] visual)."""
    dtype = text_sequence.dtype
    text = l2_normalize((text_sequence[:, 0] @ self.text_projection.astype(dtype))
                        .astype(jnp.float32))
    visual = l2_normalize((visual_sequence[:, 0] @ self.visual_projection.astype(dtype))
                          .astype(jnp.float32))
    return text, visual

  def encode_cross(self, text_sequence: Array, text_mask: Array, region_sequence: Array,
                   region_mask: Array, deterministic: bool = True,
                   return_layer: Optional[int] = None):
    """Cross-modal encoder on concat(text, regions).

    Args:
      text_sequence: [B, La, H] text-encoder output; text_mask [B, La].
      region_sequence: [B, R', H] region slots of the visual-encoder output; region_mask [B, R'].
      return_layer: 0-based cross layer whose output is also returned (RE; spec §10.3).

    Returns:
      (sequence [B, La+R', H], pooled [B, H], layer output [B, La+R', H] or None).
    """
    x = jnp.concatenate([text_sequence, region_sequence.astype(text_sequence.dtype)], axis=1)
    mask = jnp.concatenate([text_mask, region_mask], axis=1)
    x = layers.constrain(x, ('batch', 'length', 'embed'))
    sequence, selected = self.cross_encoder(x, mask, deterministic, return_layer)
    return sequence, self.pooler(sequence), selected

  def region_slots(self, visual_sequence: Array, attention_mask_b: Array, num_tags: int):
    """The part of the visual stream that enters the cross encoder: regions after T tag slots.

    With `cross_tag_slots > 0` that many tag slots before T also enter (spec §10.1).
    """
    start = num_tags - self.config.cross_tag_slots
    return visual_sequence[:, start:], attention_mask_b[:, start:]

  def __call__(self, batch: Batch, deterministic: bool = True, run_cross: bool = True,
               return_layer: Optional[int] = None) -> Dict[str, Array]:
    """Runs the backbone on a batch (keys as `input_pipeline/features.py`).

    Returns a dict with
      txt_encoder_output [B, La, H], vis_encoder_output [B, T+R, H],
      text_embedding [B, H], visual_embedding [B, H] (L2-normalised contrastive embeddings),
      sim_mat [B, B] (rows texts, columns images), logit_scale [],
    and, when `run_cross` (the default; False is the uni-modal path of stage 1 and retrieval's
    coarse stage), cross_sequence_output [B, La+R, H], pooled_output [B, H] and, when
    `return_layer` is set, mid_output [B, La+R, H].
    """
    text_sequence = self.encode_text(batch, deterministic)
    visual_sequence = self.encode_visual(batch, deterministic)
    text_embedding, visual_embedding = self.contrastive_embeddings(text_sequence, visual_sequence)
    outputs = dict(txt_encoder_output=text_sequence, vis_encoder_output=visual_sequence,
                   text_embedding=text_embedding, visual_embedding=visual_embedding,
                   sim_mat=text_embedding @ visual_embedding.T, logit_scale=self.logit_scale)
    if run_cross:
      regions, region_mask = self.region_slots(visual_sequence, batch['attention_mask_b'],
                                               batch['input_ids_b'].shape[1])
      sequence, pooled, mid = self.encode_cross(text_sequence, batch['attention_mask_a'],
                                                regions, region_mask, deterministic,
                                                return_layer)
      outputs.update(cross_sequence_output=sequence, pooled_output=pooled)
      if mid is not None:
        outputs['mid_output'] = mid
    return outputs


class MVPPretrainingModel(nn.Module):
  """Backbone + MLM head (`cls.predictions`), ITM head (`cls.seq_relationship`), concept head
  (`half_mlm`) and the optional `qa_head` (spec §1.6)."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    self.backbone = MVPBackbone(cfg)
    self.mlm_head = layers.PredictionHead(cfg, cfg.word_vocab_size)
    self.concept_head = layers.PredictionHead(cfg, cfg.word_vocab_size)
    self.itm_head = layers.dense(cfg, 2, ('embed_out', 'classes'), 'itm_head')
    if cfg.qa_num_answers:
      self.qa_head = layers.dense(cfg, cfg.qa_num_answers, ('embed_out', 'classes'), 'qa_head')

  def __call__(self, batch: Batch, deterministic: bool = True, run_cross: bool = True,
               hard_negatives: Optional[Any] = None, negative_groups: int = 1,
               return_layer: Optional[int] = None) -> Dict[str, Array]:
    """All pre-training outputs.

    Args:
      batch: model inputs (`input_pipeline/features.py`).
      deterministic: disables dropout (eval mode).
      run_cross: False runs only the uni-modal encoders and the concept head (stage 1).
      hard_negatives: None to skip ITM negatives; a PRNG key to mine them (spec §2.5); or a pair
        (hard_txt_index [B], hard_img_index [B]) to use given ones (parity tests).
      negative_groups: number of equal contiguous groups of the batch that mine negatives among
        themselves only (`local` negatives, one group per data shard); 1 = the global batch.
      return_layer: also return the output of this cross-modal layer as `mid_output`.

    Returns:
      The backbone outputs plus vis_mlm_logits [B, T+R, V]; with `run_cross` also
      mlm_logits [B, La, V]; with hard negatives also hard_txt_index [B], hard_img_index [B],
      hard_sequence_output [B, La+R, H], hard_pooled_output [B, H] and itm_logits [2B, 2]
      (positives then negatives; label 0 = matched).
    """
    outputs = self.backbone(batch, deterministic, run_cross, return_layer)
    outputs['vis_mlm_logits'] = self.concept_head(outputs['vis_encoder_output'])
    if self.config.qa_num_answers and self.is_initializing():
      self.qa_head(outputs['txt_encoder_output'][:, 0])
    if not run_cross:
      return outputs
    text_length = batch['input_ids_a'].shape[1]
    outputs['mlm_logits'] = self.mlm_head(outputs['cross_sequence_output'][:, :text_length])
    if hard_negatives is None:
      if self.is_initializing():
        self.itm_head(outputs['pooled_output'])
      return outputs

    if isinstance(hard_negatives, (tuple, list)):
      txt_index, img_index = (jnp.asarray(i, jnp.int32) for i in hard_negatives)
    else:
      txt_index, img_index = negatives.mine_hard_negatives(
          hard_negatives, outputs['sim_mat'], negative_groups)
    num_tags = batch['input_ids_b'].shape[1]
    regions, region_mask = self.backbone.region_slots(outputs['vis_encoder_output'],
                                                      batch['attention_mask_b'], num_tags)
    hard_sequence, hard_pooled, _ = self.backbone.encode_cross(
        outputs['txt_encoder_output'][txt_index], batch['attention_mask_a'][txt_index],
        regions[img_index], region_mask[img_index], deterministic)
    pooled = jnp.concatenate([outputs['pooled_output'], hard_pooled], axis=0)
    outputs.update(hard_txt_index=txt_index, hard_img_index=img_index,
                   hard_sequence_output=hard_sequence, hard_pooled_output=hard_pooled,
                   itm_logits=self.itm_head(pooled).astype(jnp.float32))
    return outputs


def dummy_batch(config: ModelConfig, batch_size: int = 2, text_length: int = 8,
                tag_length: int = 4, num_regions: int = 4) -> Dict[str, jnp.ndarray]:
  """A well-formed all-ones batch with the given shapes (for init and shape inference)."""
  ones = lambda *shape: jnp.ones(shape, jnp.int32)
  return dict(
      input_ids_a=ones(batch_size, text_length), attention_mask_a=ones(batch_size, text_length),
      token_type_ids_a=ones(batch_size, text_length) * 0,
      input_ids_b=ones(batch_size, tag_length), token_type_ids_b=ones(batch_size, tag_length),
      attention_mask_b=ones(batch_size, tag_length + num_regions),
      img_feats=jnp.zeros((batch_size, num_regions, config.region_feature_dim), jnp.float32),
      phrase_index=jnp.tile(jnp.array([[1, 2]], jnp.int32), (batch_size, 1)),
      img_index=jnp.tile(jnp.array([[text_length, text_length + num_regions]], jnp.int32),
                         (batch_size, 1)))


def init_params(config: ModelConfig, rng: jax.Array, batch: Optional[Batch] = None):
  """Initial parameters of `MVPPretrainingModel` (boxed with their logical axis names).

  Like `tie_weights()` in the reference (spec §1.7), both decoders start as copies of the first
  `word_vocab_size` rows of the word table and are independent parameters afterwards.
  """
  batch = dummy_batch(config) if batch is None else batch
  params = MVPPretrainingModel(config).init(rng, batch)['params']
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  words = params['backbone']['embeddings']['word_embeddings']['embedding']
  word_rows = nn.unbox(words)[:config.word_vocab_size]
  for head in ('mlm_head', 'concept_head'):
    decoder = params[head]['decoder']
    params[head]['decoder'] = decoder.replace_boxed(word_rows) if isinstance(
        decoder, nn.Partitioned) else word_rows
  return params
