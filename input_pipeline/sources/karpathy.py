"""COCO and Flickr30K with Karpathy's splits: an images folder + dataset_{coco,flickr30k}.json.

Karpathy's JSON (cs.stanford.edu/people/karpathy/deepimagesent):
  {"dataset": "coco" | "flickr30k", "images": [{"filename": "COCO_val2014_000000391895.jpg",
   "filepath": "val2014" (COCO only), "cocoid": 391895 (COCO only), "imgid": 0,
   "split": "train" | "restval" | "val" | "test", "sentences": [{"raw": "A man ...", ...}]}]}
Splits are exactly the JSON's `split` values (COCO: 82,783 train, 30,504 restval, 5,000 val,
5,000 test; Flickr30K: 29,000 train, 1,014 val, 1,000 test). Image ids are kept: COCO's `cocoid`
(the ids of the COCO annotations and of eccv-caption), Flickr30K's file name without extension.
Images keep the JSON's order inside each split (the COCO 1k folds are the test split's
consecutive thousands in that order). Captions are the `raw` sentences with whitespace collapsed,
the first `captions_per_image` of each image (5, the standard protocol; COCO has a few images
with 6 or 7); an image with fewer is an error naming it.
Image files are looked up at IMAGES/filepath/filename, then IMAGES/filename.
COCO caption ids (the ids eccv-caption keys its ECCV / CxC positives by) come from COCO's own
captions files, matched by (image id, text), or else from Karpathy's sentids, which in
dataset_coco.json are those ids: `coco_caption_ids` (coco_captions.py).
"""

import functools
import json
import os
from typing import Optional

from input_pipeline.sources import coco_captions
from input_pipeline.sources import samples as samples_lib

SPLITS = ('train', 'restval', 'val', 'test')
EXPECTED_SIZES = {
    'coco': {'train': 82783, 'restval': 30504, 'val': 5000, 'test': 5000},
    'flickr30k': {'train': 29000, 'val': 1014, 'test': 1000},
}


class KarpathyError(ValueError):
  """A malformed Karpathy JSON; names the file and the entry."""


@functools.lru_cache(maxsize=4)
def load_karpathy(json_path: str, captions_per_image: Optional[int] = 5) -> dict:
  """{'dataset', 'splits': {split: [(image_id, relative path, captions)]}, 'sentids': {image_id:
  [Karpathy's sentid of each kept caption, None where absent]}} of a Karpathy JSON."""
  try:
    with open(json_path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise KarpathyError(f'{json_path}: cannot read ({e}).') from None
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise KarpathyError(f'{json_path}: expected {{"images": [...], "dataset": ...}}.')
  dataset = data.get('dataset', '')
  splits, seen, sentids = {s: [] for s in SPLITS}, {}, {}
  for i, image in enumerate(data['images']):
    where = f'{json_path}: images[{i}]'
    if not isinstance(image, dict) or not isinstance(image.get('filename'), str):
      raise KarpathyError(f'{where}: needs "filename".')
    split = image.get('split')
    if split not in SPLITS:
      raise KarpathyError(f'{where} ({image["filename"]}): split {split!r} is not one of '
                          f'{SPLITS}.')
    if 'cocoid' in image:
      image_id = str(int(image['cocoid']))
    else:
      image_id = os.path.splitext(image['filename'])[0]
    if image_id in seen:
      raise KarpathyError(f'{where}: image id {image_id!r} repeats images[{seen[image_id]}].')
    seen[image_id] = i
    sentences = image.get('sentences')
    if not isinstance(sentences, list) or not all(
        isinstance(s, dict) and isinstance(s.get('raw'), str) for s in sentences):
      raise KarpathyError(f'{where}: "sentences" must be a list of {{"raw": str}}.')
    try:
      captions = samples_lib.captions_from_text([s['raw'] for s in sentences], where)
    except ValueError as e:
      raise KarpathyError(str(e)) from None
    if captions_per_image is not None:
      if len(captions) < captions_per_image:
        raise KarpathyError(f'{where} (image {image_id}): {len(captions)} captions, fewer than '
                            f'captions_per_image={captions_per_image}.')
      captions = captions[:captions_per_image]
    sentids[image_id] = [s.get('sentid') if isinstance(s.get('sentid'), int) else None
                         for s in sentences[:len(captions)]]
    path = os.path.join(image.get('filepath', ''), image['filename'])
    splits[split].append((image_id, path, captions))
  return {'dataset': dataset, 'splits': {s: v for s, v in splits.items() if v},
          'sentids': sentids}


class KarpathySource:
  """Karpathy splits as shards of `shard_size` consecutive images (see the module docstring)."""

  def __init__(self, json_path: str, images_dir: str, *, captions_per_image: Optional[int] = 5,
               shard_size: int = 1000, check_sizes: Optional[str] = None):
    self.json_path, self.images_dir = os.fspath(json_path), os.fspath(images_dir)
    self.captions_per_image, self.shard_size = captions_per_image, shard_size
    self.name = f'karpathy_{os.path.splitext(os.path.basename(self.json_path))[0]}'
    if check_sizes is not None:
      sizes = {s: len(v) for s, v in self._data()['splits'].items()}
      if sizes != EXPECTED_SIZES[check_sizes]:
        raise KarpathyError(f'{self.json_path}: split sizes {sizes} differ from Karpathy\'s '
                            f'{check_sizes} split {EXPECTED_SIZES[check_sizes]}.')

  def _data(self) -> dict:
    return load_karpathy(self.json_path, self.captions_per_image)

  def splits(self) -> dict[str, list[str]]:
    return {split: [f'{split}-{start // self.shard_size:05d}'
                    for start in range(0, len(images), self.shard_size)]
            for split, images in self._data()['splits'].items()}

  def image_ids(self, split: str) -> list[str]:
    """The split's image ids in JSON order."""
    return [image_id for image_id, _, _ in self._data()['splits'][split]]

  def coco_caption_ids(self, caption_files) -> dict[str, dict[str, list[int]]]:
    """{split: {image_id: [COCO caption id of each kept caption]}}.

    With COCO's captions files: matched from them by text for the images they cover
    (coco_captions.py; CaptionIdError on a caption without a unique match). Without: Karpathy's
    own `sentid`s, for the images whose kept captions all have one: in Karpathy's
    dataset_coco.json they are COCO's caption annotation ids (image 391895: 770337, 771687,
    772707, 776154, 781998, eccv-caption's first five). Either way protocol.eccv_metrics checks
    the ids against eccv-caption's own table before it uses them.
    """
    data, out = self._data(), {}
    table = coco_captions.load_caption_table(caption_files) if caption_files else None
    for split, entries in data['splits'].items():
      for image_id, rel, captions in entries:
        sentids = data['sentids'][image_id]
        if table is not None:
          ids = coco_captions.match_caption_ids(table, image_id, captions, sentids,
                                                f'{self.json_path} ({rel})')
        else:
          ids = sentids if all(isinstance(i, int) for i in sentids) else None
        if ids is not None:
          out.setdefault(split, {})[image_id] = ids
    return out

  def read(self, shard: str):
    split, _, index = shard.rpartition('-')
    start = int(index) * self.shard_size
    entries = self._data()['splits'][split][start:start + self.shard_size]
    samples, problems = [], []
    for image_id, rel, captions in entries:
      candidates = [os.path.join(self.images_dir, rel),
                    os.path.join(self.images_dir, os.path.basename(rel))]
      path = next((p for p in candidates if os.path.isfile(p)), None)
      if path is None:
        problems.append(samples_lib.Problem(shard, image_id, 'missing_image',
                                            f'none of {candidates} exists'))
        continue
      with open(path, 'rb') as f:
        samples.append(samples_lib.Sample(image_id, f.read(), captions, f'{shard}:{path}'))
    return samples, problems
