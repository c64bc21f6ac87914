"""Model configuration of MVPTR (spec §1.1).

`ModelConfig` is a frozen dataclass so that it can be a static field of Flax modules. Configs in
`configs/` are `ml_collections.ConfigDict`s; `ModelConfig.from_dict` turns their `model` field into
this dataclass.
"""

import dataclasses
from typing import Any, Mapping, Optional

from mvp_jax.vision import pixel_config


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and options of the MVPTR backbone and its heads.

  Attributes:
    vocab_size: rows of the shared word table: WordPiece words followed by phrase-concept ids
      (spec §5.3; the authors' base checkpoint has >= 86051 rows).
    word_vocab_size: words only (`only_word_size`); the MLM and concept heads predict over these.
    vocab_multiple: the word table and both decoders get their row counts rounded up to a
      multiple of this (`padded_vocab_size`, `padded_word_vocab_size`) so that the `vocab` axis
      divides a tensor-parallel mesh axis. Padding rows start at zero, their logits are
      `layers.MASKED_LOGIT` and the converters cut them on export (`vocab_padding.py`). 1 = none.
    hidden_size: width of every encoder.
    num_heads: attention heads per layer (head_dim = hidden_size / num_heads).
    mlp_dim: feed-forward width.
    num_text_layers / num_visual_layers / num_cross_layers: depths of the three encoders.
    max_position_embeddings: rows of the position table (text and tags share it).
    type_vocab_size: rows of the segment table.
    region_feature_dim: width of one region feature (2048 RoI + 6 box dims for VinVL).
    use_region_layernorm: LayerNorm after the region projection (torch name `bert.LayerNorm`).
    layer_norm_eps: epsilon of every LayerNorm.
    dropout_rate: hidden dropout (embeddings, region embedding, attention output, FFN output).
    attention_dropout_rate: dropout on the attention probabilities.
    initializer_range: std of the normal initialiser of kernels and embeddings.
    qa_num_answers: size of the optional pre-training `qa_head` (0 = no such head).
    logit_scale_init: initial value of the learnable ITC log-temperature, log(1/0.07).
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters are always float32.
    remat: rematerialise each transformer layer in the backward pass (`layers.ordered_remat`,
      which saves activation memory on XLA:CPU's default scheduler too).
    remat_policy: what a rematerialised layer keeps: 'full' (nothing, recompute the layer),
      'dots' (`checkpoint_dots`: keep matmul outputs, recompute the elementwise work) or
      'dots_no_batch' (`checkpoint_dots_with_no_batch_dims`: keep only the weight matmuls).
    dropout_rng: PRNG implementation of the dropout masks: 'threefry' (JAX's default), 'rbg' or
      'unsafe_rbg' (XLA's RngBitGenerator; faster, deterministic per seed and backend; see
      `layers.Dropout`). Nothing else (init, negatives, WPG) changes its PRNG.
    attention_implementation: 'auto' (cuDNN flash attention on GPU in bfloat16, XLA elsewhere),
      'xla' or 'cudnn', for `jax.nn.dot_product_attention`. Training with attention dropout
      always takes the explicit softmax path (the fused kernels have no dropout).
    prediction_positions: 'all' runs the MLM and concept heads on every position (parity,
      inference); 'masked' runs them on the labelled positions only, gathered into a fixed
      number of slots per sequence (`model.gather_predictions`).
    mask_prob: corruption rate the 'masked' slots are sized for (the data's `mask_prob`).
    max_predictions_a / max_predictions_b: text / tag slots per sequence in 'masked' mode; 0 =
      derived from the length and `mask_prob` (`model.max_predictions_for`).
    cross_tag_slots: extra tag slots that enter the cross-modal encoder in front of the regions. 0 is
      the clean default; 10 reproduces the authors' VQA fine-tuning quirk (spec §10.1).
    vision: None ('features': regions from `img_feats`) or a `vision.pixel_config.PixelConfig`
      (a mapping is converted): a tower in the model turns `pixels` + `region_boxes` into them.
  """
  vocab_size: int = 86051
  word_vocab_size: int = 30522
  vocab_multiple: int = 1
  hidden_size: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  num_text_layers: int = 6
  num_visual_layers: int = 6
  num_cross_layers: int = 6
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  region_feature_dim: int = 2054
  use_region_layernorm: bool = False
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  qa_num_answers: int = 0
  logit_scale_init: float = 2.659260036932778
  dtype: str = 'float32'
  remat: bool = False
  remat_policy: str = 'full'
  dropout_rng: str = 'threefry'
  attention_implementation: str = 'auto'
  prediction_positions: str = 'all'
  mask_prob: float = 0.15
  max_predictions_a: int = 0
  max_predictions_b: int = 0
  cross_tag_slots: int = 0
  vision: Optional[pixel_config.PixelConfig] = None

  def __post_init__(self):
    object.__setattr__(self, 'vision', pixel_config.from_value(self.vision))
    if self.vision is not None and self.region_feature_dim != self.vision.feature_dim:
      raise ValueError(f'region_feature_dim {self.region_feature_dim} must be bins² x the tower '
                       f'width + 6 = {self.vision.bins}² x {self.vision.width} + 6 = '
                       f'{self.vision.feature_dim} with model.vision set.')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not a multiple of num_heads '
                       f'{self.num_heads}.')
    if self.word_vocab_size > self.vocab_size:
      raise ValueError(f'word_vocab_size {self.word_vocab_size} exceeds vocab_size '
                       f'{self.vocab_size}: concepts are rows after the words.')
    if self.vocab_multiple < 1:
      raise ValueError(f'vocab_multiple must be >= 1, got {self.vocab_multiple}.')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}.")
    choices = dict(remat_policy=('full', 'dots', 'dots_no_batch'),
                   dropout_rng=('threefry', 'rbg', 'unsafe_rbg'),
                   attention_implementation=('auto', 'xla', 'cudnn'),
                   prediction_positions=('all', 'masked'))
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'{name} must be one of {allowed}, got {getattr(self, name)!r}.')
    if not 0.0 < self.mask_prob < 1.0:
      raise ValueError(f'mask_prob must be in (0, 1), got {self.mask_prob}.')
    if self.max_predictions_a < 0 or self.max_predictions_b < 0:
      raise ValueError('max_predictions_a / max_predictions_b must be >= 0 (0 = derived).')
    for name in ('num_text_layers', 'num_visual_layers', 'num_cross_layers'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the word table in the model: `vocab_size` rounded up to `vocab_multiple`."""
    return _round_up(self.vocab_size, self.vocab_multiple)

  @property
  def padded_word_vocab_size(self) -> int:
    """Rows of the MLM / concept decoders: `word_vocab_size` rounded up to `vocab_multiple`."""
    return _round_up(self.word_vocab_size, self.vocab_multiple)

  @classmethod
  def from_dict(cls, values: Optional[Mapping[str, Any]]) -> 'ModelConfig':
    """Builds a config from a mapping (e.g. `config.model` of a ConfigDict); unknown keys fail."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown model config keys {unknown}; known keys: {sorted(known)}.')
    return cls(**values)

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)


def _round_up(rows: int, multiple: int) -> int:
  return -(-rows // multiple) * multiple


def base() -> ModelConfig:
  """The paper's base setting: BERT-base sizes, 6+6+6 layers (spec §1.1), the vocabulary padded
  to a multiple of 128 (86,051 -> 86,144 table rows, 30,522 -> 30,592 decoder rows)."""
  return ModelConfig(vocab_multiple=128)


def tiny(**overrides) -> ModelConfig:
  """A few-thousand-parameter model for tests and CPU runs."""
  values = dict(vocab_size=300, word_vocab_size=200, hidden_size=32, num_heads=4, mlp_dim=64,
                num_text_layers=2, num_visual_layers=2, num_cross_layers=2,
                max_position_embeddings=64, region_feature_dim=2054, use_region_layernorm=True)
  values.update(overrides)
  return ModelConfig(**values)
