"""Two-stage image-text retrieval (spec §4.1) of the pre-training and the fine-tuned model.

`type='retrieval'` on clean batches of (caption, image) rows grouped by `image_index`:

1. **Coarse.** Two streams are read from the split's rows. The text stream is every caption,
   encoded by the text encoder where it lies. The image stream is every *distinct image once over
   all hosts*: the hosts agree on which of them owns each image (the lowest host holding one of
   its captions), and each encodes only its own, gathering the visual inputs row by row from its
   batches (no per-caption copy of image features is made). All caption-image pairs are ranked by
   the cosine of their contrastive embeddings.
2. **Fine.** For every caption its top `top_k_images` images, and for every image its top
   `top_k_texts` captions, are re-scored by the cross-modal encoder and the matching head
   (ITM alone, or ITM + the coarse cosine with `add_contrastive`). The head is chosen from
   `context.task`: the pre-training ITM head, where label 0 = matched, for 'pretrain'; the
   retrieval `classifier`, where label 1 = matched, for 'retrieval'.
3. **Ranks.** The rank of a query is the position of its first ground truth among the re-scored
   candidates, and k when the coarse stage lost every ground truth (the authors' rule);
   R@K = mean(rank < K).

Every phase runs a number of steps agreed by all hosts, padding with dummy rows (`example_valid`
0), and gathers its results once. Every host computes the same candidate lists, and each feeds
its slice of every rerank chunk of `score_batch_size` pairs.

Metrics: {t2i, i2t, coarse_t2i, coarse_i2t}_R@{k} for k in `ks`, rsum, num_captions,
num_images; with `folds` F the same, retrieved within each of F equal image folds and averaged
(COCO 1k).
With the truth columns in the batches (`caption_meaning`, `image_meanings`:
input_pipeline/true_matches.py) also the truth-aware ranks, where a hit is any image (caption)
the query is true of: truth_{t2i, i2t, coarse_t2i, coarse_i2t}_R@{k}, their chance
truth_{t2i, i2t}_chance_R@{k}, and the ITM head on the truth-checked reranked pairs (the
hardest: each query's top candidates), truth_itm_accuracy (balanced, chance 0.5),
truth_itm_{true, false}_accuracy and pair counts, and the same on easy pairs, each caption with
its own image and a random other image (truth_itm_random_*).
"""

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax.evaluators import base
from mvp_jax.evaluators import hosts
from mvp_jax.evaluators import progress as progress_lib
from mvp_jax.evaluators import retrieval_metrics

Array = jax.Array
Columns = Dict[str, np.ndarray]
TEXT_INPUTS = ('input_ids_a', 'token_type_ids_a', 'attention_mask_a')
VISUAL_INPUTS = ('input_ids_b', 'token_type_ids_b', 'attention_mask_b', 'img_feats')


def pretraining_match_probability(module: nn.Module, pooled: Array) -> Array:
  """p(matched) from the pre-training ITM head, where label 0 = matched: [N, H] -> [N]."""
  logits = module.itm_head(pooled).astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)[:, 0]


def finetuned_match_probability(module: nn.Module, pooled: Array) -> Array:
  """p(matched) from the retrieval `classifier`, where label 1 = matched: [N, H] -> [N]."""
  return module.match_probability(pooled)


def image_owners(batches: Sequence[base.Batch]) -> Tuple[List[Tuple[int, int]], List[int]]:
  """This host's images to encode and every host's count of them.

  Returns:
    (pointers, counts): pointers (batch, row) to the first valid row of each image this host
    owns, by increasing image_index; counts[h] = the number of images host h owns. A host owns
    an image when it holds one of its captions and no lower host does.
  """
  first: Dict[int, Tuple[int, int]] = {}
  for b, batch in enumerate(batches):
    for row in np.flatnonzero(np.asarray(batch['example_valid'])):
      first.setdefault(int(batch['image_index'][row]), (b, int(row)))
  ids = np.asarray(sorted(first), np.int64)
  width = int(hosts.agree([len(ids)]).max())
  table = hosts.gather(np.pad(ids, (0, width - len(ids)), constant_values=-1)[None])
  seen, counts, host = set(), [], jax.process_index()
  mine: List[Tuple[int, int]] = []
  for h, row in enumerate(table):
    new = [int(i) for i in row if i >= 0 and int(i) not in seen]
    if h == host:
      mine = [first[i] for i in new]
    seen.update(new)
    counts.append(len(new))
  return mine, counts


def _valid(columns: Columns) -> Columns:
  valid = columns.pop('example_valid').astype(bool)
  return {k: v[valid] for k, v in columns.items()}


class RetrievalEvaluator(base.Evaluator):
  """`type='retrieval'`: two-stage retrieval R@K, coarse (contrastive) and fine (reranked).

  Options:
    top_k_images: images re-scored per caption (authors: 64).
    top_k_texts: captions re-scored per image (authors: 128).
    add_contrastive: fine score = p(matched) + coarse cosine instead of p(matched) alone.
    score_batch_size: global pairs per rerank step (a multiple of the hosts and data shards).
    ks: the recall cut-offs (with 1, 5 and 10 among them also `rsum`, the six R@{1,5,10} of
      the reranked t2i and i2t ranks summed in %, as papers report it).
    folds: retrieve within F consecutive equal folds of the images and average (COCO 1k: 5 on
      the 5k test split; `evaluate`).
  """
  tasks = ('pretrain', 'retrieval')
  corrupt = False

  def __init__(self, name, context, *, top_k_images: int = 64, top_k_texts: int = 128,
               add_contrastive: bool = False, score_batch_size: int = 64,
               ks: Sequence[int] = (1, 5, 10), folds: int = 1, **kwargs):
    super().__init__(name, context, **kwargs)
    if min(top_k_images, top_k_texts, score_batch_size) < 1:
      raise ValueError(f'evals.{name}: top_k_images, top_k_texts and score_batch_size must be '
                       f'>= 1, got {top_k_images}, {top_k_texts}, {score_batch_size}.')
    self.top_k_images, self.top_k_texts = int(top_k_images), int(top_k_texts)
    self.add_contrastive, self.score_batch_size = bool(add_contrastive), int(score_batch_size)
    self.ks = tuple(int(k) for k in ks)
    if int(folds) < 1:
      raise ValueError(f'evals.{name}: folds must be >= 1, got {folds}.')
    self.folds = int(folds)
    self.match_probability = (pretraining_match_probability if context.task == 'pretrain'
                              else finetuned_match_probability)

  # --- Jitted pieces (per-row outputs) -----------------------------------------------------------
  def _encode_text(self, params, batch) -> Dict[str, Array]:
    def fn(m):
      sequence = m.backbone.encode_text(batch)
      embedding, _ = m.backbone.contrastive_embeddings(sequence, sequence)
      return dict(embedding=embedding, sequence=sequence)
    return self.context.model.apply({'params': params}, method=fn)

  def _encode_visual(self, params, batch) -> Dict[str, Array]:
    def fn(m):
      sequence = m.backbone.encode_visual(batch)
      _, embedding = m.backbone.contrastive_embeddings(sequence, sequence)
      regions, region_mask = m.backbone.region_slots(sequence, batch['attention_mask_b'],
                                                     batch['input_ids_b'].shape[1])
      return dict(embedding=embedding, regions=regions, region_mask=region_mask)
    return self.context.model.apply({'params': params}, method=fn)

  def _score(self, params, chunk) -> Dict[str, Array]:
    def fn(m):
      _, pooled, _ = m.backbone.encode_cross(chunk['text_sequence'], chunk['text_mask'],
                                             chunk['regions'], chunk['region_mask'])
      return dict(score=self.match_probability(m, pooled))
    return self.context.model.apply({'params': params}, method=fn)

  def _stream(self, params, fn, phase: str, steps: int, batch_at, keep=()) -> Columns:
    """Runs `fn` on `batch_at(0..steps-1)` (host batches, the same count on every host).

    Returns the outputs of `fn` and the host columns `keep` + ('example_valid',) of every row
    of every host, host 0's rows first ([hosts * steps * rows, ...]).
    """
    progress = progress_lib.Progress(self.name, phase, steps)
    local: Dict[str, List[np.ndarray]] = {}
    for step in range(steps):
      host_batch = batch_at(step)
      device_batch = self.context.to_device(host_batch)
      out = {k: hosts.local_rows(v)
             for k, v in self.jitted(fn, device_batch)(params, device_batch).items()}
      out.update({k: np.asarray(host_batch[k]) for k in tuple(keep) + ('example_valid',)})
      for key, value in out.items():
        local.setdefault(key, []).append(value)
      progress.step()
    return hosts.gather_columns({k: np.concatenate(v) for k, v in local.items()})

  # --- Coarse stage: every caption and every image encoded once --------------------------------
  def encode(self, params) -> Tuple[Columns, Columns]:
    """(texts, images) of the split over all hosts: per valid caption `embedding` [C, H],
    `sequence` [C, La, H], `mask` [C, La], `image_index` [C]; per distinct image, by increasing
    image_index, `embedding` [I, H], `regions` [I, R', H], `region_mask` [I, R'],
    `image_index` [I]."""
    batches, text_steps, rows = self.read()
    padding = base.dummy_batch(batches[0])
    truth = 'caption_meaning' in batches[0]  # truth columns: kept beside the embeddings
    text_truth, image_truth = (('caption_meaning',), ('image_meanings',)) if truth else ((), ())
    text_keys = TEXT_INPUTS + ('image_index', 'example_valid') + text_truth

    def text_batch(step: int) -> Columns:
      batch = batches[step] if step < len(batches) else padding
      return {k: batch[k] for k in text_keys}

    texts = _valid(self._stream(params, self._encode_text, 'encode texts', text_steps,
                                text_batch, keep=('attention_mask_a', 'image_index') + text_truth))
    texts['mask'] = texts.pop('attention_mask_a')

    pointers, counts = image_owners(batches)
    if not sum(counts):
      raise ValueError(f'evals.{self.name}: split {self.split!r} has no valid row.')
    # Pixel mode (a tower in the model) carries pixels / region_boxes instead of img_feats.
    keys = tuple(k for k in VISUAL_INPUTS + ('pixels', 'region_boxes') if k in batches[0]) + (
        'image_index',) + image_truth
    # The fixed dummy row: pad ids and zero features, attending to every slot (a fully masked
    # row would give a softmax over nothing).
    blank = {k: np.zeros_like(np.asarray(batches[0][k][0])) for k in keys}
    blank['attention_mask_b'] = np.ones_like(blank['attention_mask_b'])

    def image_batch(step: int) -> Columns:
      chunk = pointers[step * rows:(step + 1) * rows]
      picked = [{k: batches[b][k][r] for k in keys} for b, r in chunk]
      picked += [blank] * (rows - len(chunk))
      out = {k: np.stack([p[k] for p in picked]) for k in keys}
      out['example_valid'] = (np.arange(rows) < len(chunk)).astype(np.int32)
      return out

    images = _valid(self._stream(params, self._encode_visual, 'encode images',
                                 -(-max(counts) // rows), image_batch,
                                 keep=('image_index',) + image_truth))
    order = np.argsort(images['image_index'], kind='stable')
    return texts, {k: v[order] for k, v in images.items()}

  # --- Fine stage: rerank the candidates -------------------------------------------------------
  def score_pairs(self, params, text_rows: np.ndarray, image_rows: np.ndarray,
                  texts: Mapping[str, np.ndarray], images: Mapping[str, np.ndarray]
                  ) -> np.ndarray:
    """p(matched) of pairs (caption text_rows[i], image image_rows[i]) -> [pairs] float32.

    The pair list is padded to whole chunks of `score_batch_size`; each host feeds its slice of
    every chunk, so all hosts run the same number of identically shaped steps.
    """
    size, num_hosts, host = self.score_batch_size, jax.process_count(), jax.process_index()
    if size % num_hosts:
      raise ValueError(f'evals.{self.name}: score_batch_size {size} is not divisible by '
                       f'{num_hosts} hosts.')
    local, total = size // num_hosts, len(text_rows)
    chunks = -(-total // size)
    pad = chunks * size - total
    text_rows = np.concatenate([text_rows, np.zeros(pad, np.int64)]).astype(np.int64)
    image_rows = np.concatenate([image_rows, np.zeros(pad, np.int64)]).astype(np.int64)
    valid = (np.arange(chunks * size) < total).astype(np.int32)

    def chunk(c: int) -> Columns:
      mine = slice(c * size + host * local, c * size + (host + 1) * local)
      t, v = text_rows[mine], image_rows[mine]
      return dict(text_sequence=texts['sequence'][t], text_mask=texts['mask'][t],
                  regions=images['regions'][v], region_mask=images['region_mask'][v],
                  example_valid=valid[mine])

    # `_stream` returns every row host-major, [hosts, chunks, local]: make it chunk-major.
    scores = self._stream(params, self._score, 'rerank', chunks, chunk)['score']
    scores = scores.reshape(num_hosts, chunks, local).transpose(1, 0, 2).reshape(-1)
    return scores[:total].astype(np.float32)

  def ranks(self, params) -> Dict[str, np.ndarray]:
    """Fine and coarse ranks: {'t2i', 'i2t', 'coarse_t2i', 'coarse_i2t'} (and with truth
    columns the same four `truth_*`) -> [queries] int."""
    return self.evaluate(params)[0]

  def evaluate(self, params) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """(ranks, truth metrics): `ranks` and, with truth columns, the chance R@K and ITM
    accuracy on truth-checked pairs (module docstring; empty without).

    With `folds` F > 1 the images (in `image_index` order) are cut into F consecutive equal
    folds and each fold is retrieved on its own, its captions against its images only (COCO 1k:
    the five folds of 1,000 Karpathy test images); the ranks are the folds' concatenated, so
    every R@K is the mean over the folds (equal folds hold equal numbers of queries), and the
    other metrics are averaged over the folds.
    """
    texts, images = self.encode(params)
    missing = ~np.isin(texts['image_index'], images['image_index'])
    if missing.any():
      raise ValueError(f'evals.{self.name}: captions of images {texts["image_index"][missing]} '
                       f'have no encoded image.')
    if self.folds == 1:
      return self._evaluate_on(params, texts, images)
    num_images = len(images['image_index'])
    if num_images % self.folds:
      raise ValueError(f'evals.{self.name}: {num_images} images do not cut into folds={self.folds} '
                       'equal folds.')
    caption_image = np.searchsorted(images['image_index'], texts['image_index'])
    results = []
    for fold in np.split(np.arange(num_images), self.folds):
      in_fold = np.isin(caption_image, fold)
      results.append(self._evaluate_on(params, {k: v[in_fold] for k, v in texts.items()},
                                       {k: v[fold] for k, v in images.items()}))
    ranks = {name: np.concatenate([r[name] for r, _ in results]) for name in results[0][0]}
    extras = {name: float(np.mean([e[name] for _, e in results])) for name in results[0][1]}
    return ranks, extras

  def _evaluate_on(self, params, texts: Columns, images: Columns
                   ) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """`evaluate` of these captions against these images (every caption's image among them)."""
    caption_image = np.searchsorted(images['image_index'], texts['image_index'])
    similarity = texts['embedding'] @ images['embedding'].T  # [captions, images]
    is_match = caption_image[:, None] == np.arange(len(images['image_index']))[None, :]
    t2i = retrieval_metrics.top_k_candidates(similarity, self.top_k_images)  # [C, k]
    i2t = retrieval_metrics.top_k_candidates(similarity.T, self.top_k_texts)  # [I, k]
    scores = self.score_pairs(
        params,
        np.concatenate([np.repeat(np.arange(len(t2i)), t2i.shape[1]), i2t.reshape(-1)]),
        np.concatenate([t2i.reshape(-1), np.repeat(np.arange(len(i2t)), i2t.shape[1])]),
        texts, images)

    def fine(candidates, candidate_scores, query_similarity, query_is_match):
      candidate_scores = candidate_scores.reshape(candidates.shape)
      if self.add_contrastive:
        candidate_scores = candidate_scores + np.take_along_axis(query_similarity, candidates, 1)
      return retrieval_metrics.rerank_ranks(candidate_scores,
                                            np.take_along_axis(query_is_match, candidates, 1))

    ranks = {
        't2i': fine(t2i, scores[:t2i.size], similarity, is_match),
        'i2t': fine(i2t, scores[t2i.size:], similarity.T, is_match.T),
        'coarse_t2i': retrieval_metrics.full_ranks(similarity, is_match),
        'coarse_i2t': retrieval_metrics.full_ranks(similarity.T, is_match.T),
    }
    extras: Dict[str, float] = {}
    if 'caption_meaning' in texts:
      truth = retrieval_metrics.truth_matrix(texts['caption_meaning'], images['image_meanings'])
      ranks.update(
          truth_t2i=fine(t2i, scores[:t2i.size], similarity, truth),
          truth_i2t=fine(i2t, scores[t2i.size:], similarity.T, truth.T),
          truth_coarse_t2i=retrieval_metrics.full_ranks(similarity, truth),
          truth_coarse_i2t=retrieval_metrics.full_ranks(similarity.T, truth.T))
      for name, matrix in (('t2i', truth), ('i2t', truth.T)):
        for k, value in retrieval_metrics.chance_recall_at_k(matrix, self.ks).items():
          extras[f'truth_{name}_chance_R@{k}'] = value
      pair_truth = np.concatenate([np.take_along_axis(truth, t2i, 1).reshape(-1),
                                   np.take_along_axis(truth.T, i2t, 1).reshape(-1)])
      itm = retrieval_metrics.matching_accuracy(scores, pair_truth)
      extras.update({f'truth_itm_{k}': v for k, v in itm.items()})
      # The same head on easy pairs: each caption with its own image and a random other one.
      pair_text, pair_image = retrieval_metrics.own_and_random_pairs(caption_image,
                                                                     len(images['image_index']))
      random_scores = self.score_pairs(params, pair_text, pair_image, texts, images)
      itm = retrieval_metrics.matching_accuracy(random_scores, truth[pair_text, pair_image])
      extras.update({f'truth_itm_random_{k}': v for k, v in itm.items()})
    return ranks, extras

  def run(self, params: Any) -> base.Metrics:
    ranks, extras = self.evaluate(params)
    results = [(self.metric(name), value) for name, value in extras.items()]
    for name, values in ranks.items():
      for k, value in retrieval_metrics.recall_at_k(values, self.ks).items():
        results.append((self.metric(f'{name}_R@{k}'), value))
    if {1, 5, 10} <= set(self.ks):  # RSUM: the six R@{1,5,10} in %, as papers report it
      recall = {name: retrieval_metrics.recall_at_k(ranks[name], (1, 5, 10))
                for name in ('t2i', 'i2t')}
      results.append((self.metric('rsum'), 100.0 * sum(sum(r.values()) for r in recall.values())))
    results.append((self.metric('num_captions'), float(len(ranks['t2i']))))
    results.append((self.metric('num_images'), float(len(ranks['i2t']))))
    return iter(results)
