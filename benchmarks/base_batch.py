"""A synthetic base-size pre-training batch (numpy only), shared by the JAX and PyTorch benchmarks.

Base lengths: 35 words + 5 phrases of text, 20 tags, 50 regions; every position of the text and
the tags carries a label with probability 0.15 (ids in [5, word_vocab)), all masks are ones.
"""

import numpy as np

TEXT, PHRASES, TAGS, REGIONS = 35, 5, 20, 50


def synthetic_batch(rng: np.random.Generator, batch: int, word_vocab_size: int = 30522,
                    region_feature_dim: int = 2054):
  """Model inputs and labels: text [batch, 40], tags [batch, 20], img_feats [batch, 50, D],
  phrase_index / img_index [batch, 2] ([start, end) inside the 90-long cross-modal sequence)."""
  text_len = TEXT + PHRASES
  ids = lambda shape: rng.integers(5, word_vocab_size, shape).astype(np.int32)
  labels = lambda shape: np.where(rng.random(shape) < 0.15, ids(shape), -1).astype(np.int32)
  return dict(
      input_ids_a=ids((batch, text_len)), attention_mask_a=np.ones((batch, text_len), np.int32),
      token_type_ids_a=np.zeros((batch, text_len), np.int32), input_ids_b=ids((batch, TAGS)),
      token_type_ids_b=np.ones((batch, TAGS), np.int32),
      attention_mask_b=np.ones((batch, TAGS + REGIONS), np.int32),
      img_feats=rng.standard_normal((batch, REGIONS, region_feature_dim)).astype(np.float32),
      phrase_index=np.tile([[TEXT, text_len]], (batch, 1)).astype(np.int32),
      img_index=np.tile([[text_len, text_len + REGIONS]], (batch, 1)).astype(np.int32),
      mlm_labels_a=labels((batch, text_len)), mlm_labels_b=labels((batch, TAGS)))
