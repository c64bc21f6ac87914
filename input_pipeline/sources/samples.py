"""Samples of a sharded image-text source, their problems, and the image records built from them.

Every source (karpathy.py, webdataset.py, hf_table.py) is a list of named shards per split and a
`read(shard)` giving the shard's samples in a fixed order plus the problems met reading it. A
shard is the unit of work of both the feature extraction (extract.py) and the record writing
(builders.py, one Beam element per shard), so both can be resumed, retried and spread per shard.

  Sample   image_id (str, unique in the split), image (the encoded file's bytes; b'' when the
           regions are given), captions (list of non-empty str), where ('shard:key' for messages).
  Problem  shard, key, kind (PROBLEM_KINDS or an image error kind of mvp_jax.vision.images), detail.
A sample with a problem is skipped and counted by shard and key, never silently dropped; the
build fails when more than `max_error_fraction` of the samples read were skipped (builders.py).
"""

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from input_pipeline import jsonio
from input_pipeline import phrase_extractor
from input_pipeline import phrase_files
from input_pipeline import vinvl

PROBLEM_KINDS = (
    'truncated_shard',   # a tar that ends or breaks mid-way: the samples before it are kept
    'unreadable_shard',  # a shard file that cannot be opened at all
    'missing_image',     # a sample without an image member / file / cell
    'missing_caption',   # a sample without a caption
    'bad_caption',       # an empty, non-UTF-8 or malformed caption
    'duplicate_key',     # a key already seen in the shard
    'missing_features',  # given features lack the sample
    'missing_phrases',   # a given phrase table lacks a caption of the sample
)


@dataclasses.dataclass
class Sample:
  image_id: str
  image: bytes
  captions: list
  where: str


@dataclasses.dataclass(frozen=True)
class Problem:
  shard: str
  key: str
  kind: str
  detail: str

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


class Source(Protocol):
  """A sharded image-text source."""

  name: str

  def splits(self) -> dict[str, list[str]]:
    """{split: [shard name, ...]} in order; shard names are unique over all splits."""

  def read(self, shard: str) -> tuple[list[Sample], list[Problem]]:
    """The samples of one shard in stored order, and the problems met reading it."""


# regions(shard, samples) -> ({image_id: Regions}, problems); see regions.py.
Featurizer = Callable[[str, Sequence[Sample]], tuple[dict, list]]


@dataclasses.dataclass(frozen=True)
class Regions:
  """The regions of one image: image_size (h, w); features float32 [R, D]; boxes float32 [R, 4]
  pixels; tags list of R str."""
  image_size: tuple
  features: Any
  boxes: Any
  tags: list


class Phrases:
  """Phrase tuples of a caption: the built-in extractor, or a phrase file (phrase_files.py).

  A phrase file that lacks a caption of a sample is a 'missing_phrases' problem for the sample.
  """

  def __init__(self, phrase_file: Optional[str] = None, fmt: str = 'auto'):
    self.phrase_file, self.fmt = phrase_file, fmt
    self._table = None

  def __call__(self, image_id: str, k: int, caption: str) -> Optional[list]:
    if self.phrase_file is None:
      return [phrase_files.normalize_tuple(p, f'built-in phrases of {caption!r}')
              for p in phrase_extractor.extract_phrases(caption)]
    if self._table is None:
      self._table = phrase_files.load_phrase_file(self.phrase_file, self.fmt)
    found = self._table.get((image_id, k))
    return None if found is None else list(found)

  def __getstate__(self):  # Beam pickles this: the table is reloaded in the worker.
    return {'phrase_file': self.phrase_file, 'fmt': self.fmt, '_table': None}


def shard_records(source: Source, featurizer: Featurizer, phrases: Phrases,
                  shard: str) -> tuple[list[dict], list[Problem], int]:
  """(image records in sample order, problems, samples read) of one shard.

  Records follow features.py with image_png b'' and every phrase region unknown (-1), exactly as
  import_vinvl and extract_regions write them.
  """
  samples, problems = source.read(shard)
  read = len(samples) + sum(1 for p in problems if p.key)
  regions, region_problems = featurizer(shard, samples) if samples else ({}, [])
  problems = list(problems) + list(region_problems)
  records = []
  for sample in samples:
    found = regions.get(sample.image_id)
    if found is None:
      continue  # The featurizer reported it.
    caption_phrases = [phrases(sample.image_id, k, c) for k, c in enumerate(sample.captions)]
    missing = [k for k, p in enumerate(caption_phrases) if p is None]
    if missing:
      problems.append(Problem(shard, sample.image_id, 'missing_phrases',
                              f'{phrases.phrase_file} has no phrases for captions {missing}'))
      continue
    records.append(vinvl.make_record(sample.image_id, found.image_size, found.features,
                                     found.boxes, found.tags, sample.captions, caption_phrases))
  return records, problems, read


def write_problems(report_dir: str, split: str, shard: str, problems: Iterable[Problem],
                   samples_read: int, records: int) -> None:
  """Writes one shard's problem report atomically (workers of a Beam run each write their own)."""
  folder = os.path.join(report_dir, split)
  os.makedirs(folder, exist_ok=True)
  jsonio.write_json_atomically({'shard': shard, 'samples_read': samples_read, 'records': records,
                                'problems': [p.to_dict() for p in problems]},
                               os.path.join(folder, f'{shard}.json'))


def read_problems(report_dir: str, split: str, shards: Sequence[str]) -> dict:
  """The merged report of a split: totals, counts by kind and by shard, every problem."""
  total = {'samples_read': 0, 'records': 0, 'by_kind': {}, 'by_shard': {}, 'problems': []}
  for shard in shards:
    path = os.path.join(report_dir, split, f'{shard}.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: no report for shard {shard!r}; the build did not finish.')
    with open(path, encoding='utf-8') as f:
      one = json.load(f)
    total['samples_read'] += one['samples_read']
    total['records'] += one['records']
    for p in one['problems']:
      total['by_kind'][p['kind']] = total['by_kind'].get(p['kind'], 0) + 1
      total['by_shard'][shard] = total['by_shard'].get(shard, 0) + 1
      total['problems'].append(p)
  return total


def captions_from_text(text: Any, where: str) -> list:
  """Captions from a str (one caption) or a list of str; ValueError naming `where` otherwise."""
  captions = [text] if isinstance(text, str) else text
  if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
    raise ValueError(f'{where}: a caption must be a str or a list of str, got '
                     f'{type(text).__name__}')
  captions = [' '.join(c.split()) for c in captions]
  if not captions or not all(captions):
    raise ValueError(f'{where}: empty caption')
  return captions
