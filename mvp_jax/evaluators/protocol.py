"""The standard image-text retrieval protocol, from a similarity matrix.

  metrics = protocol.evaluate('coco_5k', similarity, caption_image)   # or 'coco_1k', 'flickr_1k'

similarity: float [images, captions], higher = more similar (any score: the evaluator's
two-stage scores with the authors' rerank k, or a contrastive cosine). caption_image: int
[captions], the image index (row) of each caption; the standard test sets have 5 captions per
image. Ranks: the rank of a query is the number of items scoring strictly above its best ground
truth (0 = hit at R@1); R@K = mean(rank < K) in %, for i2t (image -> captions, any of its 5
captions) and t2i (caption -> its image); RSUM = the sum of the six R@{1,5,10}.

  coco_5k    the 5,000 Karpathy test images, 25,000 captions.
  coco_1k    the mean over five folds: fold f is test images [1000 f, 1000 (f + 1)) in Karpathy
             order with their captions, each fold ranked on its own.
  flickr_1k  the 1,000 Flickr30K Karpathy test images, 5,000 captions.

`coco_5k_image_ids()` and `check_coco_test_ids()` compare a test split with the list the
`eccv-caption` package ships (its coco_test_ids.npy: 25,000 COCO caption ids, 5 per image, the
images in Karpathy order, each image's ids ascending); `eccv_metrics()` adds ECCV Caption's
extended-positive metrics (mAP@R, R-Precision, R@1 on ECCV positives) and CxC R@K through that
package, offline. PMRP needs the package's separately downloaded plausible-match files (> 140 MB,
`pm_dir`); without them it is not computed.

Caption ids: eccv-caption keys every caption by its COCO caption annotation id (the `id` in COCO's
captions_val2014.json), and its extended positives differ between the captions of one image, so
column j of the similarity must carry the id of exactly the caption that column scored. Nothing
about a caption's position gives that id, so `eccv_metrics` takes it (`caption_ids`, no default):
`built_caption_ids(tfds_dir)` reads the ids the COCO builder recorded (matched by text from
COCO's captions files, input_pipeline/sources/coco_captions.py, or Karpathy's sentids, which in
dataset_coco.json are those ids), and `check_eccv_caption_ids` refuses ids that are not
eccv-caption's, column by column, before any metric is computed.
"""

import os
from typing import Optional, Sequence

import numpy as np

KS = (1, 5, 10)
PROTOCOLS = {'coco_5k': (5000, 1), 'coco_1k': (1000, 5), 'flickr_1k': (1000, 1)}
_BLOCK = 512


def _check(similarity, caption_image) -> np.ndarray:
  caption_image = np.asarray(caption_image)
  if similarity.ndim != 2 or caption_image.shape != (similarity.shape[1],):
    raise ValueError(f'similarity must be [images, captions] and caption_image [captions], got '
                     f'{similarity.shape} and {caption_image.shape}.')
  if caption_image.min(initial=0) < 0 or caption_image.max(initial=0) >= similarity.shape[0]:
    raise ValueError('caption_image holds an image index outside the similarity rows.')
  if len(np.unique(caption_image)) != similarity.shape[0]:
    raise ValueError('some images have no caption.')
  return caption_image.astype(np.int64)


def i2t_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """int [images]: captions scoring above the image's best own caption."""
  caption_image = _check(similarity, caption_image)
  ranks = np.empty(similarity.shape[0], np.int64)
  for start in range(0, similarity.shape[0], _BLOCK):
    block = np.asarray(similarity[start:start + _BLOCK], np.float32)
    rows = np.arange(start, start + len(block))
    own = caption_image[None, :] == rows[:, None]
    best = np.where(own, block, -np.inf).max(axis=1)
    ranks[start:start + len(block)] = (block > best[:, None]).sum(axis=1)
  return ranks


def t2i_ranks(similarity: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
  """int [captions]: images scoring above the caption's own image."""
  caption_image = _check(similarity, caption_image)
  ranks = np.empty(similarity.shape[1], np.int64)
  for start in range(0, similarity.shape[1], _BLOCK * 8):
    block = np.asarray(similarity[:, start:start + _BLOCK * 8], np.float32)
    cols = np.arange(block.shape[1])
    own = block[caption_image[start:start + block.shape[1]], cols]
    ranks[start:start + block.shape[1]] = (block > own[None, :]).sum(axis=0)
  return ranks


def recalls(similarity: np.ndarray, caption_image: np.ndarray,
            ks: Sequence[int] = KS) -> dict[str, float]:
  """{'i2t_r1', ..., 't2i_r10', 'rsum'} in % over every image and caption of `similarity`."""
  i2t, t2i = i2t_ranks(similarity, caption_image), t2i_ranks(similarity, caption_image)
  out = {f'i2t_r{k}': 100.0 * float(np.mean(i2t < k)) for k in ks}
  out.update({f't2i_r{k}': 100.0 * float(np.mean(t2i < k)) for k in ks})
  out['rsum'] = sum(out[f'{d}_r{k}'] for d in ('i2t', 't2i') for k in ks)
  return out


def evaluate(protocol: str, similarity: np.ndarray, caption_image: np.ndarray,
             captions_per_image: int = 5) -> dict[str, float]:
  """The metrics of `protocol` (module docstring); checks the test set's size."""
  if protocol not in PROTOCOLS:
    raise ValueError(f'unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}.')
  fold_images, folds = PROTOCOLS[protocol]
  caption_image = _check(similarity, caption_image)
  counts = np.bincount(caption_image, minlength=similarity.shape[0])
  expected = (fold_images * folds, fold_images * folds * captions_per_image)
  if similarity.shape != expected or not np.all(counts == captions_per_image):
    raise ValueError(f'{protocol}: expects {expected[0]} images with {captions_per_image} '
                     f'captions each, got similarity {similarity.shape} and caption counts '
                     f'{sorted(set(counts.tolist()))}.')
  per_fold = []
  for f in range(folds):
    images = np.arange(f * fold_images, (f + 1) * fold_images)
    captions = np.flatnonzero((caption_image >= images[0]) & (caption_image <= images[-1]))
    per_fold.append(recalls(similarity[images[0]:images[-1] + 1][:, captions],
                            caption_image[captions] - images[0]))
  return {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}


# ----------------------------------------------------------------------------------------------
# The independent reference: the eccv-caption package (pip install eccv-caption), offline.


def _eccv_data(name: str) -> str:
  import eccv_caption  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(eccv_caption.__file__), 'data', name)


def coco_5k_caption_ids() -> np.ndarray:
  """int64 [25000]: eccv-caption's COCO 5k test caption ids, 5 per image in Karpathy image order,
  each image's ascending (its own order: not the order of a built record's captions)."""
  return np.load(_eccv_data('coco_test_ids.npy'))


def coco_5k_image_ids() -> list[str]:
  """The 5,000 COCO 5k test image ids (str) in Karpathy order, from eccv-caption."""
  import json  # pylint: disable=import-outside-toplevel
  with open(_eccv_data('original_caption_to_image.json'), encoding='utf-8') as f:
    caption_to_image = json.load(f)
  return list(dict.fromkeys(str(caption_to_image[str(c)][0]) for c in coco_5k_caption_ids()))


def check_coco_test_ids(image_ids: Sequence[str]) -> None:
  """Raises ValueError naming the differences when `image_ids` (a built COCO test split, in
  order) is not the standard Karpathy 5k test list in its order."""
  ours, theirs = [str(i) for i in image_ids], coco_5k_image_ids()
  if ours == theirs:
    return
  missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
  moved = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
  raise ValueError(f'test split differs from the COCO 5k list: {len(ours)} vs {len(theirs)} '
                   f'images, missing {missing[:5]}, extra {extra[:5]}, first position that '
                   f'differs {moved}.')


def retrieved_lists(similarity: np.ndarray, row_ids: Sequence[int], col_ids: Sequence[int],
                    top: int, groups: int = 1) -> dict[int, list[int]]:
  """{row id: col ids best first}: each of `groups` equal column groups' top `top`, merged by
  score (so the list restricted to one group starts with that group's own top `top`)."""
  out, width = {}, similarity.shape[1] // groups
  col_ids = np.asarray(col_ids)
  for start in range(0, similarity.shape[0], _BLOCK):
    block = np.asarray(similarity[start:start + _BLOCK], np.float32)
    picks = []
    for g in range(groups):
      part = block[:, g * width:(g + 1) * width]
      k = min(top, width)
      picks.append(np.argpartition(-part, k - 1, axis=1)[:, :k] + g * width)
    picks = np.concatenate(picks, axis=1)
    order = np.argsort(-np.take_along_axis(block, picks, axis=1), axis=1, kind='stable')
    picks = np.take_along_axis(picks, order, axis=1)
    for r, row in enumerate(picks):
      out[int(row_ids[start + r])] = col_ids[row].tolist()
  return out


def built_caption_ids(tfds_dir: str, split: str = 'test') -> tuple[list[str], np.ndarray]:
  """(image ids [N] in built order, int64 [N * C] COCO caption id of each column) of a split built
  by input_pipeline.sources.builders.KarpathyCoco; columns are image i's C captions at C i + k,
  the order the retrieval task sets (layout.write_retrieval) and so the similarity have.
  ValueError when the build recorded no COCO caption id for an image."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder_from_directory(tfds_dir)
  table = (builder.info.metadata or {}).get('coco_caption_ids', {}).get(split, {})
  source = builder.as_data_source(split)
  image_ids, caption_ids = [], []
  for i in range(len(source)):
    record = source[i]
    image_id = record['image_id'].decode()
    if image_id not in table:
      raise ValueError(
          f'{tfds_dir} {split}: no COCO caption ids for image {image_id} ({len(table)} images '
          'have them): its captions have no Karpathy sentid; build KarpathyCoco with COCO\'s '
          'annotations/captions_val2014.json in the manual folder; ECCV Caption / CxC metrics '
          'are not computed without them.')
    if len(table[image_id]) != len(record['captions']):
      raise ValueError(f'{tfds_dir} {split}: image {image_id} has {len(record["captions"])} '
                       f'captions but {len(table[image_id])} COCO caption ids.')
    image_ids.append(image_id)
    caption_ids.extend(table[image_id])
  return image_ids, np.asarray(caption_ids, np.int64)


def check_eccv_caption_ids(image_ids: Sequence[int], caption_ids: np.ndarray) -> None:
  """ValueError naming the first problem unless the columns' ids are exactly eccv-caption's 25,000
  COCO 5k captions, column j being a caption of row image j // 5 in eccv-caption's own ground
  truth (original_caption_to_image.json)."""
  import eccv_caption  # pylint: disable=import-outside-toplevel
  truth = eccv_caption.Metrics().coco_gts['t2i']
  image_ids = [int(i) for i in image_ids]
  if caption_ids.shape != (5 * len(image_ids),):
    raise ValueError(f'caption_ids: expected [{5 * len(image_ids)}] (5 per image), got '
                     f'{caption_ids.shape}.')
  theirs = set(coco_5k_caption_ids().tolist())
  missing, extra = sorted(theirs - set(caption_ids.tolist())), sorted(
      set(caption_ids.tolist()) - theirs)
  if missing or extra or len(set(caption_ids.tolist())) != len(caption_ids):
    raise ValueError(f'caption_ids are not eccv-caption\'s 25,000 COCO 5k test captions: '
                     f'missing {missing[:5]}, not in its list {extra[:5]}, repeated '
                     f'{len(caption_ids) - len(set(caption_ids.tolist()))}.')
  for j, c in enumerate(caption_ids.tolist()):
    if truth[c][0] != image_ids[j // 5]:
      raise ValueError(f'column {j}: COCO caption {c} belongs to image {truth[c][0]} in '
                       f'eccv-caption, but the column is a caption of row image '
                       f'{image_ids[j // 5]}.')


def eccv_metrics(similarity: np.ndarray, *, caption_ids: Optional[Sequence[int]] = None,
                 image_ids: Optional[Sequence[int]] = None, pm_dir: Optional[str] = None,
                 top: int = 100) -> dict[str, float]:
  """ECCV Caption mAP@R, R-Precision, R@1 and CxC R@{1,5,10} (i2t and t2i, in %) of a COCO 5k
  similarity [5000, 25000]: row i is image image_ids[i] (default eccv-caption's Karpathy order),
  column j its caption with COCO caption id caption_ids[j] (required: built_caption_ids; the
  columns of image i are 5 i .. 5 i + 4); PMRP too when `pm_dir` holds the PM files."""
  import eccv_caption  # pylint: disable=import-outside-toplevel
  if caption_ids is None:
    raise ValueError('eccv_metrics needs the COCO caption id of every column (caption_ids=, '
                     'from built_caption_ids): a caption\'s position does not give it, and '
                     'ECCV Caption / CxC positives differ between the captions of one image.')
  caption_ids = np.asarray(caption_ids, np.int64)
  image_ids = [int(i) for i in (coco_5k_image_ids() if image_ids is None else image_ids)]
  check_eccv_caption_ids(image_ids, caption_ids)
  metrics = eccv_caption.Metrics(extra_file_dir=pm_dir)
  i2t = retrieved_lists(similarity, image_ids, caption_ids, top)
  t2i = retrieved_lists(np.asarray(similarity).T, caption_ids, image_ids, top)
  targets = ['eccv_map_at_r', 'eccv_rprecision', 'eccv_r1', 'cxc_recalls'] + (
      ['pmrp'] if pm_dir else [])
  scores = metrics.compute_all_metrics(i2t, t2i, target_metrics=targets, Ks=KS, verbose=False)
  return {f'{name}_{direction}': 100.0 * float(value)
          for name, by_direction in scores.items() for direction, value in by_direction.items()}
