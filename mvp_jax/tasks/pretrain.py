"""Pre-training (spec §2): MCR, ITC, WPG, ITM, MLM on `MVPPretrainingModel`.

Schedules (spec §2.1) belong to this task: `joint` (one stage, 2) computes all five losses every
step, as the authors' released code does. `two_stage` follows the paper's description: stage 1
(steps < `stage1_steps`) trains the uni-modal encoders with MCR and ITC only (the cross-modal
encoder is not run and STAGE1_FROZEN is not updated), stage 2 trains the whole model with all
five losses. The stage is a pure function of the step, so a resumed run is in the right stage by
construction. The frozen parameters keep an Adam state of their own that starts at the switch
(`mvp_jax/optim.py`), so their first update is a first Adam step.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mvp_jax import convert
from mvp_jax import losses
from mvp_jax import metrics as metrics_lib
from mvp_jax.config import ModelConfig
from mvp_jax import model as model_lib

Array = jax.Array

NAME = 'pretrain'
BATCH_KEYS: Tuple[str, ...] = ()
HOST_KEYS = ('example_index',)
DEFAULT_LENGTHS = dict(max_seq_length=35, max_phrases=5, max_tag_length=20, max_img_seq_length=50)

ALL_LOSSES = ('mcr', 'itc', 'mlm', 'itm', 'wpg')
STAGE1_LOSSES = ('mcr', 'itc')
# What stage 1 does not train: the cross-modal encoder and everything that sits on it.
STAGE1_FROZEN = ('backbone/cross_encoder', 'backbone/pooler', 'mlm_head', 'itm_head')


def model_config(model_cfg: ModelConfig, info: Any = None) -> ModelConfig:
  del info
  return model_cfg


def create_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig) -> nn.Module:
  del config
  return model_lib.MVPPretrainingModel(model_cfg)


def init_params(model: nn.Module, rng: Array, batch: Mapping[str, Array]) -> Any:
  """Boxed initial parameters; both decoders start as the word rows (`model.init_params`)."""
  return model_lib.init_params(model.config, rng, batch)


def _schedule(config: ml_collections.ConfigDict) -> str:
  schedule = config.get('schedule', 'joint')
  if schedule not in ('joint', 'two_stage'):
    raise ValueError(f"Unknown schedule {schedule!r}: use 'joint' or 'two_stage'.")
  return schedule


def stages(config: ml_collections.ConfigDict) -> Tuple[int, ...]:
  return (1, 2) if _schedule(config) == 'two_stage' else (2,)


def stage_at(config: ml_collections.ConfigDict, step: int) -> int:
  """1 or 2. `joint` is always stage 2 (everything); `two_stage` switches at stage1_steps."""
  if _schedule(config) == 'joint':
    return 2
  return 1 if step < config.stage1_steps else 2


def frozen(config: ml_collections.ConfigDict, stage: int) -> Tuple[str, ...]:
  del config
  return STAGE1_FROZEN if stage == 1 else ()


def compute_losses(model: nn.Module, params: Any, batch: Mapping[str, Array], rng: Array, *,
                   stage: int, num_groups: int, weights: Mapping[str, float],
                   deterministic: bool = False,
                   negative_temperature: Optional[float] = None) -> Tuple[Array, Dict[str, Array]]:
  """Weighted sum of the stage's losses, and the metrics of each.

  Args:
    model: `MVPPretrainingModel`.
    params: its parameters (unboxed).
    batch: model inputs plus `mlm_labels_a` / `mlm_labels_b` (input_pipeline/features.py).
    rng: PRNG key for dropout, negative mining and the WPG picks.
    stage: 1 (MCR + ITC, uni-modal only) or 2 (all five losses).
    num_groups: negative groups (`local` = one per data shard, `global` = 1); also the loss
      normalisation (per-group means, `mvp_jax/losses.py`).
    weights: per-loss weights (missing = 1).
    negative_temperature: None mines the hardest ITM negatives; T samples them from
      softmax(sim / T) (`negatives.mine_hard_negatives`).

  With the truth columns in the batch (`caption_meaning`, `image_meanings`:
  `data.true_matches`, input_pipeline/true_matches.py) the captions true of another image of the
  batch are left out of the ITC denominators and of the ITM negatives; `true_match_rate` is the
  fraction of off-diagonal pairs that were true.

  Returns:
    (total loss, metrics) where metrics has `loss_<name>` for each computed loss and the counts
    behind the accuracies (`<name>_correct`, `<name>_count`).
  """
  dropout_rng, negatives_rng, wpg_rng = jax.random.split(rng, 3)
  run_cross = stage == 2
  true_matches = None
  if 'caption_meaning' in batch:
    true_matches = losses.true_match_mask(batch['caption_meaning'], batch['image_meanings'])
  mining = {}
  if true_matches is not None:
    mining['true_matches'] = true_matches
  if negative_temperature is not None:
    mining['temperature'] = float(negative_temperature)
  outputs = model.apply({'params': params}, batch, deterministic=deterministic,
                        run_cross=run_cross, hard_negatives=negatives_rng if run_cross else None,
                        negative_groups=num_groups, mining=mining or None,
                        rngs={'dropout': dropout_rng})
  values, metrics = {}, {}
  # Heads on every position or only on the gathered masked ones (`prediction_positions`).
  values['mcr'], mcr = losses.masked_concept_loss(
      *model_lib.concept_predictions(outputs, batch), num_groups)
  values['itc'], itc = losses.contrastive_loss(outputs['sim_blocks'], outputs['logit_scale'],
                                               num_groups, true_matches)
  metrics.update(mcr_correct=mcr['correct'], mcr_count=mcr['count'],
                 itc_correct=itc['t2i_correct'] + itc['i2t_correct'], itc_count=2 * itc['count'],
                 logit_scale=outputs['logit_scale'],
                 mcr_dropped=outputs.get('vis_mlm_dropped', jnp.zeros((), jnp.int32)))
  if run_cross:
    values['mlm'], mlm = losses.masked_language_loss(
        *model_lib.text_predictions(outputs, batch), num_groups)
    values['itm'], itm = losses.matching_loss(outputs['itm_pair_logits'])
    values['wpg'], wpg = losses.phrase_grounding_loss(
        wpg_rng, outputs['cross_sequence_output'], batch['phrase_index'], batch['img_index'],
        num_groups)
    metrics.update(mlm_correct=mlm['correct'], mlm_count=mlm['count'],
                   itm_correct=itm['correct'], itm_count=itm['count'],
                   wpg_count=wpg['count'], wpg_pos=wpg['pos'], wpg_neg=wpg['neg'],
                   mlm_dropped=outputs.get('mlm_dropped', jnp.zeros((), jnp.int32)))
  total = sum(weights.get(name, 1.0) * value for name, value in values.items())
  metrics.update({f'loss_{name}': value for name, value in values.items()})
  size = batch['input_ids_a'].shape[0]
  metrics['true_match_rate'] = (jnp.zeros(()) if true_matches is None else (
      true_matches.sum() - jnp.trace(true_matches)) / max(size * (size - 1), 1))
  metrics['loss'] = total
  return total, metrics


def loss_fn(model: nn.Module, config: ml_collections.ConfigDict, *, stage: int,
            num_groups: int):
  """`(params, batch, rng) -> (loss, metrics)` of `stage` with `config.loss_weights`."""
  weights = dict(config.get('loss_weights') or {})
  temperature = config.get('negative_temperature')

  def fn(params, batch, rng):
    return compute_losses(model, params, batch, rng, stage=stage, num_groups=num_groups,
                          weights=weights, negative_temperature=temperature)

  return fn


def metrics(stage: int):
  """Stage 1: MCR + ITC; stage 2 (and joint): all five losses."""
  if stage == 1:
    return metrics_lib.collection(('loss_mcr', 'loss_itc', 'mcr_dropped', 'true_match_rate'),
                                  ('mcr', 'itc'),
                                  ('logit_scale',))
  # `*_dropped`: labelled positions beyond the masked-head slots (prediction_positions='masked';
  # sized so that this is ~1e-6 per sequence), logged so that a too-small bound is visible.
  return metrics_lib.collection(
      ('loss_mcr', 'loss_itc', 'loss_mlm', 'loss_itm', 'loss_wpg', 'wpg_pos', 'wpg_neg',
       'mcr_dropped', 'mlm_dropped', 'true_match_rate'),
      ('mcr', 'itc', 'mlm', 'itm'), ('logit_scale',))


def torch_entries(model_cfg: ModelConfig):
  return convert.pretraining_entries(model_cfg)
