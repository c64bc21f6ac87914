"""The MVPTR backbone (`BiBertImgModel`) and the pre-training model (`BiBertImgForPreTraining`).

`MVPBackbone` holds everything shared by pre-training and the downstream tasks: embeddings, the
text / visual / cross-modal encoders, the pooler, the contrastive projections and the learnable
logit scale. `MVPPretrainingModel` adds the MLM, concept (tag) and ITM heads and produces every
output the five pre-training losses need (`losses.py`). Downstream models wrap the same backbone.

Shapes: B batch, La text length, T tag length, R regions, H hidden, V word vocabulary.
"""

import math
from typing import Any, Dict, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mvp_jax import layers
from mvp_jax import negatives
from mvp_jax import pixel_model
from mvp_jax import sharding
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
    if cfg.vision is not None:  # regions from pixels: the tower in the graph (pixel_model.py)
      self.vision_tower = pixel_model.tower_module(cfg)
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
    """Tags [B, T] + img_feats [B, R, D] (or, with config.vision, pixels and region_boxes)
    with attention_mask_b [B, T+R] -> [B, T+R, H]."""
    tags = self.embeddings(batch['input_ids_b'], batch['token_type_ids_b'], deterministic)
    feats = batch['img_feats'] if self.config.vision is None else pixel_model.region_features(
        self.vision_tower, batch, self.config.vision)
    regions = self.region_embedding(feats, deterministic)
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
    # padded_word_vocab_size outputs; the padding columns' logits are layers.MASKED_LOGIT.
    self.mlm_head = layers.PredictionHead(cfg, cfg.padded_word_vocab_size, cfg.word_vocab_size)
    self.concept_head = layers.PredictionHead(cfg, cfg.padded_word_vocab_size,
                                              cfg.word_vocab_size)
    self.itm_head = layers.dense(cfg, 2, ('embed_out', 'classes'), 'itm_head')
    if cfg.qa_num_answers:
      self.qa_head = layers.dense(cfg, cfg.qa_num_answers, ('embed_out', 'classes'), 'qa_head')

  def __call__(self, batch: Batch, deterministic: bool = True, run_cross: bool = True,
               hard_negatives: Optional[Any] = None, negative_groups: int = 1,
               mining: Optional[Dict[str, Any]] = None,
               return_layer: Optional[int] = None) -> Dict[str, Array]:
    """All pre-training outputs.

    Args:
      batch: model inputs (`input_pipeline/features.py`); with `prediction_positions='masked'`
        also `mlm_labels_b` (and `mlm_labels_a` when `run_cross`).
      deterministic: disables dropout (eval mode).
      run_cross: False runs only the uni-modal encoders and the concept head (stage 1).
      hard_negatives: None to skip ITM negatives; a PRNG key to mine them (spec §2.5); or a pair
        (hard_txt_index [B], hard_img_index [B]) to use given ones (parity tests); given indices
        must lie in their row's group.
      negative_groups: number of equal contiguous groups of the batch that mine negatives among
        themselves only (`local` negatives, one group per data shard); 1 = the global batch.
        With G > 1 every gather of the re-encode is group-local (no cross-device traffic when a
        group is one data shard) and `sim_blocks` holds the G diagonal blocks of `sim_mat`.
      mining: optional keyword arguments of `negatives.mine_hard_negatives` (`true_matches`
        [B, B] bool to leave false negatives out, `temperature` to sample); None = reference.
      return_layer: also return the output of this cross-modal layer as `mid_output`.

    Returns:
      The backbone outputs plus sim_blocks [G, B/G, B/G] and the concept-head outputs; with
      `run_cross` also the MLM-head outputs; with hard negatives also hard_txt_index [B],
      hard_img_index [B] (global row indices), hard_sequence_output [B, La+R, H],
      hard_pooled_output [B, H], itm_logits [2B, 2] (positives then negatives; label 0 =
      matched) and itm_pair_logits [B, 2, 2] (row k: [positive k, negative k]; the shard-local
      layout of the same logits). Head outputs: with `prediction_positions='all'` vis_mlm_logits [B, T+R, V] and
      mlm_logits [B, La, V]; with 'masked' (see `gather_predictions`) vis_mlm_gathered_logits
      [B, Pb, V], vis_mlm_gathered_labels [B, Pb], vis_mlm_positions [B, Pb], vis_mlm_dropped []
      and the same four `mlm_*` entries for the text. `text_predictions` / `concept_predictions`
      return the (logits, labels) pair of either mode for the losses.
    """
    cfg = self.config
    outputs = self.backbone(batch, deterministic, run_cross, return_layer)
    outputs['sim_blocks'] = sharding.group_similarity(
        outputs['text_embedding'], outputs['visual_embedding'], negative_groups)
    num_tags = batch['input_ids_b'].shape[1]
    # 'all' keeps the concept logits of the region slots too (as the reference returns them).
    self._predict(outputs, 'vis_mlm', self.concept_head, outputs['vis_encoder_output'],
                  batch, 'mlm_labels_b', num_tags, cfg.max_predictions_b, full=True)
    if cfg.qa_num_answers and self.is_initializing():
      self.qa_head(outputs['txt_encoder_output'][:, 0])
    if not run_cross:
      return outputs
    text_length = batch['input_ids_a'].shape[1]
    self._predict(outputs, 'mlm', self.mlm_head, outputs['cross_sequence_output'], batch,
                  'mlm_labels_a', text_length, cfg.max_predictions_a)
    if hard_negatives is None:
      if self.is_initializing():
        self.itm_head(outputs['pooled_output'])
      return outputs

    if isinstance(hard_negatives, (tuple, list)):
      txt_index, img_index = (jnp.asarray(i, jnp.int32) for i in hard_negatives)
    elif negative_groups == 1:
      txt_index, img_index = negatives.mine_hard_negatives(hard_negatives, outputs['sim_mat'],
                                                           **(mining or {}))
    else:
      txt_index, img_index = mine_in_groups(hard_negatives, outputs['sim_blocks'], **(mining or {}))
    regions, region_mask = self.backbone.region_slots(outputs['vis_encoder_output'],
                                                      batch['attention_mask_b'], num_tags)
    take = lambda x, index: sharding.take_within_groups(x, index, negative_groups)
    hard_sequence, hard_pooled, _ = self.backbone.encode_cross(
        take(outputs['txt_encoder_output'], txt_index), take(batch['attention_mask_a'], txt_index),
        take(regions, img_index), take(region_mask, img_index), deterministic)
    # itm_pair_logits keeps pair k's positive and negative on k's shard; itm_logits (the
    # reference layout) concatenates along the sharded batch axis, which moves data.
    pairs = jnp.stack([outputs['pooled_output'], hard_pooled], axis=1)  # [B, 2, H]
    pair_logits = self.itm_head(pairs).astype(jnp.float32)  # [B, 2 (pos, neg), 2]
    outputs.update(hard_txt_index=txt_index, hard_img_index=img_index,
                   hard_sequence_output=hard_sequence, hard_pooled_output=hard_pooled,
                   itm_pair_logits=pair_logits,
                   itm_logits=jnp.concatenate([pair_logits[:, 0], pair_logits[:, 1]], axis=0))
    return outputs

  def _predict(self, outputs, name, head, sequence, batch, label_key, length, max_predictions,
               full=False):
    """Runs `head` on the labelled part (first `length` positions) of `sequence`: on all its
    positions (all of `sequence` when `full`) or only on the masked ones."""
    # Init batches may lack labels; the parameters do not depend on the mode.
    if self.config.prediction_positions == 'all' or (
        self.is_initializing() and label_key not in batch):
      outputs[f'{name}_logits'] = head(sequence if full else sequence[:, :length])
      return
    if label_key not in batch:
      raise ValueError(f"prediction_positions='masked' needs {label_key!r} in the batch (the "
                       f"positions come from the labels); got keys {sorted(batch)}.")
    labels = batch[label_key]
    if labels.shape[1] != length:
      raise ValueError(f'{label_key} has length {labels.shape[1]}, the sequence part it labels '
                       f'has {length}.')
    num = max_predictions or max_predictions_for(length, self.config.mask_prob)
    gathered, gathered_labels, positions, dropped = gather_predictions(
        sequence[:, :length], labels, num)
    outputs.update({f'{name}_gathered_logits': head(gathered),
                    f'{name}_gathered_labels': gathered_labels,
                    f'{name}_positions': positions, f'{name}_dropped': dropped})


def mine_in_groups(rng: Array, sim_blocks: Array, true_matches: Optional[Array] = None,
                   temperature: Optional[float] = None):
  """`negatives.mine_hard_negatives` run in each group on its own block: global indices [B].

  Group g uses key `split(rng, G)[g]`. Only the block [b, b] of each group is read, so the
  mining is local to a data shard; the result is a valid in-group pairing like
  `mine_hard_negatives(rng, sim_mat, G)`, from a different random stream.
  """
  groups, block = sim_blocks.shape[:2]
  keys = jax.random.split(rng, groups)
  if true_matches is None:
    mine = lambda key, sim: negatives.mine_hard_negatives(key, sim, 1, temperature=temperature)
    txt, img = jax.vmap(mine)(keys, sim_blocks)  # [G, b] local
  else:
    mine = lambda key, sim, true: negatives.mine_hard_negatives(key, sim, 1, true, temperature)
    txt, img = jax.vmap(mine)(keys, sim_blocks, negatives.group_blocks(true_matches, groups))
  offset = (jnp.arange(groups, dtype=jnp.int32) * block)[:, None]
  return (txt + offset).reshape(-1), (img + offset).reshape(-1)


def max_predictions_for(length: int, mask_prob: float, tolerance: float = 1e-6) -> int:
  """Prediction slots per sequence: the smallest P with Pr[Binomial(length, mask_prob) > P] <=
  tolerance.

  Every position is selected independently with `mask_prob` (input_pipeline/masking.py) and only
  some positions are eligible, so a sequence exceeds P with probability below `tolerance`
  (1e-6: 40 text positions at 0.15 -> 19 slots, 20 tags -> 12).
  """
  tail = 1.0  # Pr[X > k], updated as k grows
  for k in range(length + 1):
    tail -= math.comb(length, k) * mask_prob ** k * (1.0 - mask_prob) ** (length - k)
    if tail <= tolerance:
      return max(k, 1)
  return length


def gather_predictions(sequence: Array, labels: Array, num: int):
  """The first `num` labelled positions of each row, for a head run on masked positions only.

  Labelled positions (label >= 0) beyond the first `num` of a row are dropped and counted, not
  an error: corruption is a Bernoulli draw without a hard cap, `num` is sized so that this
  happens with probability ~1e-6 per row (`max_predictions_for`), and a dropped label only
  removes one term from the loss. The trainer logs `*_dropped` and warns when it is non-zero.

  Args:
    sequence: [B, L, H] encoder outputs; labels [B, L] ids, -1 where unlabelled.
    num: slots per row (clipped to L).

  Returns:
    (gathered [B, P, H], gathered labels [B, P] (-1 in unused slots), positions [B, P] int32 (0
    in unused slots), dropped [] int32 labels that did not fit).
  """
  length = labels.shape[1]
  num = min(num, length)
  valid = labels >= 0
  # Slot of each labelled position = its rank among the row's labels; a one-hot [B, L, P] picks
  # them. Elementwise work and a batched matmul only: no sort or top-k, whose SPMD lowering
  # gathers the batch, and an exact pick (one non-zero term per sum).
  rank = jnp.cumsum(valid, axis=1) - 1
  pick = valid[..., None] & (rank[..., None] == jnp.arange(num)[None, None, :])  # [B, L, P]
  kept = pick.any(axis=1)  # [B, P]
  positions = jnp.einsum('blp,l->bp', pick.astype(jnp.int32), jnp.arange(length, dtype=jnp.int32))
  gathered_labels = jnp.where(kept, jnp.einsum('blp,bl->bp', pick.astype(jnp.int32), labels), -1)
  gathered = jnp.einsum('blp,blh->bph', pick.astype(sequence.dtype), sequence)
  dropped = (valid.sum() - kept.sum()).astype(jnp.int32)
  return (layers.constrain(gathered, ('batch', 'length', 'embed')), gathered_labels, positions,
          dropped)


def text_predictions(outputs: Dict[str, Array], batch: Batch):
  """(MLM logits, labels) for `losses.masked_language_loss`, in either head mode."""
  if 'mlm_gathered_logits' in outputs:
    return outputs['mlm_gathered_logits'], outputs['mlm_gathered_labels']
  return outputs['mlm_logits'], batch['mlm_labels_a']


def concept_predictions(outputs: Dict[str, Array], batch: Batch):
  """(MCR logits, labels) for `losses.masked_concept_loss`, in either head mode."""
  if 'vis_mlm_gathered_logits' in outputs:
    return outputs['vis_mlm_gathered_logits'], outputs['vis_mlm_gathered_labels']
  return outputs['vis_mlm_logits'], batch['mlm_labels_b']


def dummy_batch(config: ModelConfig, batch_size: int = 2, text_length: int = 8,
                tag_length: int = 4, num_regions: int = 4) -> Dict[str, jnp.ndarray]:
  """A well-formed all-ones batch with the given shapes (for init and shape inference)."""
  ones = lambda *shape: jnp.ones(shape, jnp.int32)
  pixels = {} if config.vision is None else pixel_model.dummy_inputs(config, batch_size,
                                                                     num_regions)
  return dict(**pixels,
      input_ids_a=ones(batch_size, text_length), attention_mask_a=ones(batch_size, text_length),
      token_type_ids_a=ones(batch_size, text_length) * 0,
      input_ids_b=ones(batch_size, tag_length), token_type_ids_b=ones(batch_size, tag_length),
      attention_mask_b=ones(batch_size, tag_length + num_regions),
      **({} if pixels else dict(img_feats=jnp.zeros(
          (batch_size, num_regions, config.region_feature_dim), jnp.float32))),
      phrase_index=jnp.tile(jnp.array([[1, 2]], jnp.int32), (batch_size, 1)),
      img_index=jnp.tile(jnp.array([[text_length, text_length + num_regions]], jnp.int32),
                         (batch_size, 1)))


def init_params(config: ModelConfig, rng: jax.Array, batch: Optional[Batch] = None):
  """Initial parameters of `MVPPretrainingModel` (boxed with their logical axis names).

  Like `tie_weights()` in the reference (spec §1.7), both decoders start as copies of the first
  `word_vocab_size` rows of the word table and are independent parameters afterwards. Their
  vocabulary padding rows (`padded_word_vocab_size`) and the table's start at zero.
  """
  batch = dummy_batch(config) if batch is None else batch
  params = MVPPretrainingModel(config).init(rng, batch)['params']
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
  words = params['backbone']['embeddings']['word_embeddings']['embedding']
  word_rows = nn.unbox(words)[:config.word_vocab_size]
  padding = config.padded_word_vocab_size - config.word_vocab_size
  word_rows = jnp.pad(word_rows, ((0, padding), (0, 0)))
  for head in ('mlm_head', 'concept_head'):
    decoder = params[head]['decoder']
    params[head]['decoder'] = decoder.replace_boxed(word_rows) if isinstance(
        decoder, nn.Partitioned) else word_rows
  return params
