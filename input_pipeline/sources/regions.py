"""Regions and tags of a shard's images: the SigLIP front-end inline, or given per shard.

Both are featurizers (samples.Featurizer): `f(shard, samples) -> ({image_id: Regions}, problems)`
with a `feature_dim` attribute (D of the region features, fixed before any record is written).

  SiglipRegions   decodes each image (mvp_jax.vision.images) and runs the RegionExtractor of
                  mvp_jax.vision.extractor (grid cells + whole image, zero-shot tags), as
                  input_pipeline/extract_regions.py does; the model is loaded on first use, so
                  the object pickles small (one load per Beam worker).
  GivenRegions    reads the regions saved per shard in a features folder (extract.py writes it):
                    DIR/features.json   {"feature_dim": D, "settings": {...}}
                    DIR/<shard>.npz     keys [K] str, image_size int32 [K, 2], num_regions [K],
                                        features float32 [sum R, D], boxes float32 [sum R, 4]
                                        (pixels), tags [sum R] str
                    DIR/<shard>.problems.json  the images extraction skipped, with their kind
                  Any features of one's own can be given in this form.
"""

import json
import os
import uuid
from typing import Optional, Sequence

import numpy as np

from input_pipeline.sources import samples as samples_lib

FEATURES_FILE = 'features.json'


class SiglipRegions:
  """Featurizer running SigLIP on the images (see the module docstring)."""

  def __init__(self, checkpoint: str, *, grid: int = 7, batch_size: int = 32,
               labels_file: Optional[str] = None, tags: bool = True, top_t: int = 10,
               tag_threshold: float = 0.1, templates: Sequence[str] = ('a photo of a {}.',),
               dtype: str = 'float32', max_pixels: int = 100_000_000):
    self.checkpoint, self.grid, self.batch_size = os.fspath(checkpoint), grid, batch_size
    self.labels_file, self.tags, self.top_t = labels_file, tags, top_t
    self.tag_threshold, self.templates, self.dtype = tag_threshold, tuple(templates), dtype
    self.max_pixels = max_pixels
    self._extractor = None
    self._labels = None

  def __getstate__(self):
    return {**self.__dict__, '_extractor': None, '_labels': None}

  def settings(self) -> dict:
    return {k: v for k, v in self.__getstate__().items() if not k.startswith('_')} | {
        'checkpoint': os.path.abspath(self.checkpoint), 'templates': list(self.templates)}

  def _load(self):
    if self._extractor is None:
      # pylint: disable=import-outside-toplevel
      from mvp_jax.vision import checkpoint as checkpoint_lib
      from mvp_jax.vision import extractor as extractor_lib
      from mvp_jax.vision import tags as tags_lib
      from mvp_jax.vision import tokenizer as tokenizer_lib
      # pylint: enable=import-outside-toplevel
      config, params = checkpoint_lib.load(self.checkpoint, dtype=self.dtype)
      label_emb = None
      if self.tags:
        self._labels = tags_lib.load_labels(self.labels_file)
        tok = tokenizer_lib.SiglipTokenizer.for_checkpoint(self.checkpoint, config.text.max_len,
                                                           config.variant, None)
        label_emb = extractor_lib.embed_labels(config, params, tok, self._labels, self.templates)
      self._extractor = extractor_lib.RegionExtractor(
          config, params, regions='grid', grid_cells=self.grid, batch_size=self.batch_size,
          label_embeddings=label_emb)
    return self._extractor

  @property
  def feature_dim(self) -> int:
    return self._load().feature_dim

  def __call__(self, shard: str, samples: Sequence[samples_lib.Sample]):
    from mvp_jax.vision import images  # pylint: disable=import-outside-toplevel
    from mvp_jax.vision import tags as tags_lib  # pylint: disable=import-outside-toplevel
    extractor = self._load()
    decoded, problems = [], []
    for sample in samples:
      try:
        decoded.append((sample, images.decode(sample.image, sample.where, extractor.image_size,
                                              self.max_pixels)))
      except images.ImageError as e:
        problems.append(samples_lib.Problem(shard, sample.image_id, f'image_{e.kind}', str(e)))
    regions = {}
    for start in range(0, len(decoded), self.batch_size):
      part = decoded[start:start + self.batch_size]
      feats, probs = extractor(np.stack([image.pixels for _, image in part]))
      n = extractor.num_grid_regions
      for i, (sample, image) in enumerate(part):
        region_tags = ([''] * n if probs is None else tags_lib.region_tags(
            probs[i, :n], self._labels, self.top_t, self.tag_threshold))
        size = np.float32([image.width, image.height] * 2)
        regions[sample.image_id] = samples_lib.Regions(
            (image.height, image.width), np.ascontiguousarray(feats[i, :n]),
            (extractor.grid_boxes * size).astype(np.float32), list(region_tags))
    return regions, problems


class GivenRegions:
  """Featurizer reading regions saved per shard (see the module docstring)."""

  def __init__(self, directory: str):
    self.directory = os.fspath(directory)
    path = os.path.join(self.directory, FEATURES_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: not a features folder (run input_pipeline.sources.'
                              'extract first, or write features.json and <shard>.npz).')
    with open(path, encoding='utf-8') as f:
      self.info = json.load(f)
    self.feature_dim = int(self.info['feature_dim'])

  def settings(self) -> dict:
    return {'features': os.path.abspath(self.directory), **self.info.get('settings', {})}

  def __call__(self, shard: str, samples: Sequence[samples_lib.Sample]):
    regions, skipped = load_shard_regions(self.directory, shard)
    problems = []
    for sample in samples:
      if sample.image_id in regions:
        continue
      if sample.image_id in skipped:
        problems.append(samples_lib.Problem(**skipped[sample.image_id]))
      else:
        problems.append(samples_lib.Problem(shard, sample.image_id, 'missing_features',
                                            f'{self.directory}/{shard}.npz lacks it'))
    return regions, problems


def shard_done(directory: str, shard: str) -> bool:
  return os.path.exists(os.path.join(directory, f'{shard}.npz'))


def save_shard_regions(directory: str, shard: str, regions: dict,
                       problems: Sequence[samples_lib.Problem]) -> None:
  """Writes one shard's regions and problems; the .npz is written last (it marks the shard done)."""
  keys = list(regions)
  values = [regions[k] for k in keys]
  dim = values[0].features.shape[1] if values else 0
  arrays = {
      'keys': np.asarray(keys, dtype=str),
      'image_size': np.asarray([v.image_size for v in values], np.int32).reshape(-1, 2),
      'num_regions': np.asarray([len(v.tags) for v in values], np.int32),
      'features': (np.concatenate([v.features for v in values]) if values else
                   np.zeros((0, dim), np.float32)).astype(np.float32),
      'boxes': (np.concatenate([v.boxes for v in values]) if values else
                np.zeros((0, 4), np.float32)).astype(np.float32),
      'tags': np.asarray([t for v in values for t in v.tags], dtype=str),
  }
  _atomic(os.path.join(directory, f'{shard}.problems.json'),
          lambda f: f.write(json.dumps([p.to_dict() for p in problems], indent=1).encode()))
  _atomic(os.path.join(directory, f'{shard}.npz'), lambda f: np.savez(f, **arrays))


def load_shard_regions(directory: str, shard: str) -> tuple[dict, dict]:
  """({image_id: Regions}, {image_id: problem dict}) of one saved shard."""
  path = os.path.join(directory, f'{shard}.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no regions for shard {shard!r} (extraction not finished).')
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  ends = np.cumsum(arrays['num_regions'])
  starts = ends - arrays['num_regions']
  regions = {}
  for i, key in enumerate(arrays['keys'].tolist()):
    s, e = int(starts[i]), int(ends[i])
    regions[key] = samples_lib.Regions(
        tuple(int(v) for v in arrays['image_size'][i]), arrays['features'][s:e],
        arrays['boxes'][s:e], [str(t) for t in arrays['tags'][s:e]])
  with open(os.path.join(directory, f'{shard}.problems.json'), encoding='utf-8') as f:
    skipped = {p['key']: p for p in json.load(f)}
  return regions, skipped


def _atomic(path: str, write) -> None:
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with open(tmp, 'wb') as f:
    write(f)
  os.replace(tmp, path)
