"""Two-stage image-text retrieval evaluation (spec §4.1), for pre-trained and fine-tuned models.

1. **Coarse.** One pass over (image, caption) batches: the text encoder runs on every caption and
   the visual encoder on every *image once* (rows are grouped by `image_index`; new images are
   collected and encoded in full batches). All caption-image pairs are ranked by the cosine of
   their contrastive embeddings.
2. **Fine.** For every caption its top `top_k_images` images, and for every image its top
   `top_k_texts` captions, are re-scored by the cross-modal encoder and the matching head
   (`match_probability`; ITM alone, or ITM + the coarse cosine with `add_contrastive`).
3. **Ranks.** The rank of a query is the position of its first ground truth among the re-scored
   candidates, and k when the coarse stage lost every ground truth (the authors' rule);
   R@K = mean(rank < K).

The rerank runs in fixed-size chunks of `score_batch_size` pairs under one jitted function (static
shapes), placed with `to_device` so the chunks are sharded over the mesh's data axes. Every host
computes the same candidate lists (embeddings are all-gathered), so every host runs the same number
of chunks; the encoding pass agrees on the number of visual-encoder steps across hosts and pads
with dummy rows.
"""

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mvp_jax.evaluators import retrieval_metrics

Batch = Mapping[str, np.ndarray]
MatchProbability = Callable[[nn.Module, jax.Array], jax.Array]

VISUAL_INPUTS = ('input_ids_b', 'token_type_ids_b', 'attention_mask_b', 'img_feats')


def to_host(x) -> np.ndarray:
  """A (possibly globally sharded) array as numpy on every host."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def agree_max(value: int) -> int:
  """The maximum of a per-host integer over all hosts (the value itself on one host)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def pretraining_match_probability(module: nn.Module, pooled: jax.Array) -> jax.Array:
  """p(matched) from the pre-training ITM head, where label 0 = matched: [N, H] -> [N]."""
  logits = module.itm_head(pooled).astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)[:, 0]


def finetuned_match_probability(module: nn.Module, pooled: jax.Array) -> jax.Array:
  """p(matched) from the retrieval `classifier`, where label 1 = matched: [N, H] -> [N]."""
  return module.match_probability(pooled)


class TwoStageRetrievalEvaluator:
  """Coarse contrastive ranking + matching-head rerank of the top k; `run(params) -> dict`.

  Args:
    model: a model with a `backbone` (`MVPPretrainingModel`, `RetrievalModel`).
    batches: callable returning the evaluation batches (host-local numpy dicts with
      `image_index` and `example_valid`; rows with example_valid 0 are ignored).
    to_device: places a host-local dict of [rows, ...] arrays on the mesh (batch-sharded).
    match_probability: (module, pooled [N, H]) -> [N] p(matched) of the model's head.
    top_k_images: candidates re-scored per caption (authors: 64).
    top_k_texts: candidates re-scored per image (authors: 128).
    add_contrastive: score = p(matched) + coarse cosine instead of p(matched) alone.
    score_batch_size: global pairs per rerank chunk (a multiple of the data shards).
    ks: the recall cut-offs.
    prefix: metric-name prefix.
  """

  def __init__(self, model: nn.Module, batches: Callable[[], Iterable[Batch]],
               to_device: Callable[[Batch], Batch] = lambda b: b, *,
               match_probability: MatchProbability = finetuned_match_probability,
               top_k_images: int = 64, top_k_texts: int = 128, add_contrastive: bool = False,
               score_batch_size: int = 64, ks=(1, 5, 10), prefix: str = 'retrieval'):
    self.model, self.batches, self.to_device = model, batches, to_device
    self.top_k_images, self.top_k_texts = top_k_images, top_k_texts
    self.add_contrastive, self.score_batch_size = add_contrastive, score_batch_size
    self.ks, self.prefix = ks, prefix

    def encode_text(params, batch):
      def fn(m):
        sequence = m.backbone.encode_text(batch)
        embedding, _ = m.backbone.contrastive_embeddings(sequence, sequence)
        return dict(embedding=embedding, sequence=sequence, mask=batch['attention_mask_a'],
                    image_index=batch['image_index'], valid=batch['example_valid'])
      return model.apply({'params': params}, method=fn)

    def encode_visual(params, batch):
      def fn(m):
        sequence = m.backbone.encode_visual(batch)
        _, embedding = m.backbone.contrastive_embeddings(sequence, sequence)
        regions, region_mask = m.backbone.region_slots(sequence, batch['attention_mask_b'],
                                                       batch['input_ids_b'].shape[1])
        return dict(embedding=embedding, regions=regions, region_mask=region_mask,
                    image_index=batch['image_index'], valid=batch['example_valid'])
      return model.apply({'params': params}, method=fn)

    def score(params, text_sequence, text_mask, regions, region_mask):
      def fn(m):
        _, pooled, _ = m.backbone.encode_cross(text_sequence, text_mask, regions, region_mask)
        return match_probability(m, pooled)
      return model.apply({'params': params}, method=fn)

    self._encode_text = jax.jit(encode_text)
    self._encode_visual = jax.jit(encode_visual)
    self._score = jax.jit(score)

  # --- Coarse stage: every caption and every image encoded once ---------------------------------
  def encode(self, params) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """(texts, images): per valid caption `embedding`, `sequence`, `mask`, `image_index`; per
    distinct image (sorted by image_index) `embedding`, `regions`, `region_mask`, `image_index`."""
    texts: Dict[str, List[np.ndarray]] = {}
    images: Dict[int, Dict[str, np.ndarray]] = {}
    pending: List[Dict[str, np.ndarray]] = []  # host-local visual inputs of unseen images
    queued = set()
    rows_per_step = None

    def keep(store, out):
      valid = out['valid'].astype(bool)
      for key, value in out.items():
        if key != 'valid':
          store.setdefault(key, []).append(value[valid])

    def run_visual_steps(steps: int):
      for _ in range(steps):
        chunk, pending[:] = pending[:rows_per_step], pending[rows_per_step:]
        out = {k: to_host(v) for k, v in
               self._encode_visual(params, self.to_device(self._stack(chunk, rows_per_step)))
               .items()}
        for row in np.flatnonzero(out['valid']):
          images[int(out['image_index'][row])] = {k: out[k][row] for k in
                                                  ('embedding', 'regions', 'region_mask')}

    for batch in self.batches():
      rows_per_step = len(batch['example_valid'])
      out = {k: to_host(v) for k, v in self._encode_text(params, self.to_device(
          {k: batch[k] for k in ('input_ids_a', 'token_type_ids_a', 'attention_mask_a',
                                 'image_index', 'example_valid')})).items()}
      keep(texts, out)
      for row in np.flatnonzero(np.asarray(batch['example_valid'])):
        image = int(batch['image_index'][row])
        if image not in queued:
          queued.add(image)
          pending.append({k: np.asarray(batch[k][row]) for k in VISUAL_INPUTS + ('image_index',)})
      run_visual_steps(agree_max(len(pending) // rows_per_step))
    if rows_per_step is None:
      raise ValueError('The retrieval evaluation split yielded no batch.')
    run_visual_steps(agree_max(-(-len(pending) // rows_per_step)))
    texts_np = {k: np.concatenate(v) for k, v in texts.items()}
    ids = sorted(images)
    images_np = {k: np.stack([images[i][k] for i in ids]) for k in
                 ('embedding', 'regions', 'region_mask')}
    images_np['image_index'] = np.asarray(ids)
    return texts_np, images_np

  @staticmethod
  def _stack(rows: List[Dict[str, np.ndarray]], size: int) -> Dict[str, np.ndarray]:
    """`size` rows of visual inputs; missing rows repeat the first (or zeros) with valid 0."""
    if not rows:
      raise ValueError('No visual rows to stack.')
    template = rows[0]
    padded = rows + [template] * (size - len(rows))
    out = {k: np.stack([r[k] for r in padded]) for k in template}
    out['example_valid'] = (np.arange(size) < len(rows)).astype(np.int32)
    return out

  # --- Fine stage: rerank the candidates -------------------------------------------------------
  def score_pairs(self, params, text_rows: np.ndarray, image_rows: np.ndarray,
                  texts: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray]
                  ) -> np.ndarray:
    """p(matched) of pairs (caption text_rows[i], image image_rows[i]) -> [pairs] float32.

    The pair list is padded to whole chunks of `score_batch_size`; each host feeds its slice of
    every chunk, so all hosts run the same number of identically shaped steps.
    """
    size = self.score_batch_size
    hosts, host = jax.process_count(), jax.process_index()
    if size % hosts:
      raise ValueError(f'score_batch_size {size} is not divisible by {hosts} hosts.')
    local = size // hosts
    total = len(text_rows)
    padded = -(-total // size) * size
    text_rows = np.concatenate([text_rows, np.zeros(padded - total, text_rows.dtype)])
    image_rows = np.concatenate([image_rows, np.zeros(padded - total, image_rows.dtype)])
    scores = []
    for start in range(0, padded, size):
      mine = slice(start + host * local, start + (host + 1) * local)
      t, v = text_rows[mine], image_rows[mine]
      chunk = self.to_device(dict(text_sequence=texts['sequence'][t], text_mask=texts['mask'][t],
                                  regions=images['regions'][v],
                                  region_mask=images['region_mask'][v]))
      scores.append(to_host(self._score(params, chunk['text_sequence'], chunk['text_mask'],
                                        chunk['regions'], chunk['region_mask'])))
    return np.concatenate(scores)[:total].astype(np.float32)

  def ranks(self, params) -> Dict[str, np.ndarray]:
    """Fine and coarse ranks: {'t2i', 'i2t', 'coarse_t2i', 'coarse_i2t'} -> [queries] int."""
    texts, images = self.encode(params)
    caption_image = np.searchsorted(images['image_index'], texts['image_index'])
    similarity = texts['embedding'] @ images['embedding'].T  # [captions, images]
    is_match = caption_image[:, None] == np.arange(len(images['image_index']))[None, :]

    def fine(query_similarity, query_is_match, k, texts_are_queries):
      candidates = retrieval_metrics.top_k_candidates(query_similarity, k)
      queries = np.repeat(np.arange(len(candidates)), candidates.shape[1])
      items = candidates.reshape(-1)
      text_rows, image_rows = (queries, items) if texts_are_queries else (items, queries)
      scores = self.score_pairs(params, text_rows, image_rows, texts, images)
      scores = scores.reshape(candidates.shape)
      if self.add_contrastive:
        scores = scores + np.take_along_axis(query_similarity, candidates, 1)
      return retrieval_metrics.rerank_ranks(scores,
                                            np.take_along_axis(query_is_match, candidates, 1))

    return {
        't2i': fine(similarity, is_match, self.top_k_images, True),
        'i2t': fine(similarity.T, is_match.T, self.top_k_texts, False),
        'coarse_t2i': retrieval_metrics.full_ranks(similarity, is_match),
        'coarse_i2t': retrieval_metrics.full_ranks(similarity.T, is_match.T),
    }

  def run(self, params) -> Dict[str, float]:
    ranks = self.ranks(params)
    results = {}
    for name, values in ranks.items():
      for k, value in retrieval_metrics.recall_at_k(values, self.ks).items():
        results[f'{self.prefix}/{name}_R@{k}'] = value
    results[f'{self.prefix}/num_captions'] = float(len(ranks['t2i']))
    results[f'{self.prefix}/num_images'] = float(len(ranks['i2t']))
    return results


def make_evaluator(model: nn.Module, batches, to_device, *, pretraining: bool,
                   top_k_images: int, top_k_texts: Optional[int] = None, **kwargs
                   ) -> TwoStageRetrievalEvaluator:
  """A two-stage evaluator with the right matching-head convention for `model`."""
  return TwoStageRetrievalEvaluator(
      model, batches, to_device,
      match_probability=(pretraining_match_probability if pretraining
                         else finetuned_match_probability),
      top_k_images=top_k_images,
      top_k_texts=top_k_images if top_k_texts is None else top_k_texts, **kwargs)
