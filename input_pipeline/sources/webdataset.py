"""img2dataset webdataset shards: tar files of {key}.jpg + {key}.txt and/or {key}.json.

A sample is the run of consecutive tar members sharing a key (the member name up to the first
dot of its base name, as the webdataset library groups them). Its image is the first member with
an image extension, its caption the .txt member (UTF-8), else the .json member's "caption".
Image ids are the keys (img2dataset's keys are unique over a whole download: shard * 10^4 +
index); a key repeated in a shard is a problem. Broken samples are skipped and counted by shard
and key: no image, no or empty caption, bad JSON, a tar that ends or breaks mid-way (the samples
before the break are kept, the broken one named). Shard lists: paths, globs, and webdataset's
brace ranges (`cc3m/{00000..00331}.tar`).
"""

import glob
import json
import os
import re
import tarfile
from typing import Sequence

from input_pipeline.sources import samples as samples_lib

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
_BRACE = re.compile(r'\{(\d+)\.\.(\d+)\}')


def expand_shards(patterns: Sequence[str]) -> list[str]:
  """Tar paths of `patterns` (paths, globs, {a..b} ranges), each sorted; an empty match is an
  error naming the pattern, a repeated shard name too (shard names must be unique)."""
  paths = []
  for pattern in patterns:
    expanded = [pattern]
    while any(_BRACE.search(p) for p in expanded):
      out = []
      for p in expanded:
        m = _BRACE.search(p)
        if not m:
          out.append(p)
          continue
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        out.extend(p[:m.start()] + str(i).zfill(width) + p[m.end():] for i in range(lo, hi + 1))
      expanded = out
    found = []
    for p in expanded:
      found.extend(sorted(glob.glob(p)) if glob.has_magic(p) else [p])
    if not found:
      raise FileNotFoundError(f'shard pattern {pattern!r} matches no file.')
    paths.extend(found)
  names = [shard_name(p) for p in paths]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'shard names {repeated[:5]} repeat (shards are named by file name).')
  return paths


def shard_name(path: str) -> str:
  base = os.path.basename(path)
  return base[:-4] if base.endswith('.tar') else base


def _split_member(name: str) -> tuple[str, str]:
  folder, base = os.path.split(name)
  key, _, ext = base.partition('.')
  return os.path.join(folder, key), ext.lower()


class WebdatasetSource:
  """One split of webdataset tar shards (see the module docstring)."""

  def __init__(self, shards: Sequence[str], *, split: str = 'train'):
    self.paths = expand_shards(shards)
    self.split = split
    self.name = 'webdataset'
    self._by_name = {shard_name(p): p for p in self.paths}

  def splits(self) -> dict[str, list[str]]:
    return {self.split: list(self._by_name)}

  def read(self, shard: str):
    path = self._by_name[shard]
    samples, problems, seen = [], [], set()
    current_key, members = None, {}

    def finish():
      if current_key is None:
        return
      sample, problem = self._sample(shard, current_key, members, seen)
      seen.add(current_key)
      if problem is not None:
        problems.append(problem)
      else:
        samples.append(sample)

    try:
      with tarfile.open(path, 'r|*') as tar:
        for member in tar:
          if not member.isfile():
            continue
          key, ext = _split_member(member.name)
          if key != current_key:
            finish()
            current_key, members = key, {}
          members[ext] = tar.extractfile(member).read()
    except FileNotFoundError as e:
      return [], [samples_lib.Problem(shard, '', 'unreadable_shard', f'{path}: {e}')]
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
      detail = f'{path}: {type(e).__name__}: {e}'
      problems.append(samples_lib.Problem(shard, current_key or '', 'truncated_shard', detail))
      return samples, problems
    if os.path.getsize(path) % tarfile.BLOCKSIZE:  # Cut inside a header: tarfile sees an end.
      problems.append(samples_lib.Problem(shard, '', 'truncated_shard', f'{path}: '
                                          f'{os.path.getsize(path)} bytes is not a whole number '
                                          f'of tar blocks (the file was cut after {current_key})'))
    finish()
    return samples, problems

  @staticmethod
  def _sample(shard, key, members, seen):
    problem = lambda kind, detail: (None, samples_lib.Problem(shard, key, kind, detail))
    if key in seen:
      return problem('duplicate_key', f'key {key!r} appears twice in the shard')
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_ext is None:
      return problem('missing_image', f'members {sorted(members)} hold no image '
                     f'({"/".join(IMAGE_EXTENSIONS)})')
    where = f'{shard}:{key}'
    if 'txt' in members:
      try:
        text = members['txt'].decode('utf-8')
      except UnicodeDecodeError as e:
        return problem('bad_caption', f'{key}.txt is not UTF-8 ({e})')
    elif 'json' in members:
      try:
        meta = json.loads(members['json'])
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return problem('bad_caption', f'{key}.json is not JSON ({e})')
      text = meta.get('caption') if isinstance(meta, dict) else None
      if text is None:
        return problem('missing_caption', f'{key}.json has no "caption"')
    else:
      return problem('missing_caption', f'members {sorted(members)} hold no .txt or .json')
    try:
      captions = samples_lib.captions_from_text(text, where)
    except ValueError as e:
      return problem('bad_caption', str(e))
    return samples_lib.Sample(os.path.basename(key), members[image_ext], captions, where), None
