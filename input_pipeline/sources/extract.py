"""Region extraction as a sharded multi-host JAX job over the shard list, resumable per shard.

  python -m input_pipeline.sources.build extract --source=webdataset \\
      --shards='/data/cc3m/{00000..00331}.tar' --checkpoint=/ckpt/siglip-base-patch16-224 \\
      --features=/data/cc3m_features

Every host runs the same command (jax.distributed initialised by the launcher, e.g. one process
per TPU host or per GPU node). Shard i of the list is host (i mod process_count)'s; each host
runs its shards' batches over its local devices (RegionExtractor shards the batch over them).
A finished shard is one atomically written FEATURES/<shard>.npz (regions.py's GivenRegions
format) plus its problems; a rerun skips every finished shard, so a killed or preempted job
continues where it stopped, on any number of hosts. A rerun with another checkpoint or other
settings is refused (features.json records them). The record writing (builders.py) then reads
the folder with `--features=FEATURES`, on Beam or in one process.
"""

import json
import os
import time
from typing import Optional, Sequence

from input_pipeline.sources import regions as regions_lib
from input_pipeline.sources import samples as samples_lib


class ExtractError(ValueError):
  """A resumed extraction whose settings differ from the stored ones."""


def extract_shards(source: samples_lib.Source, featurizer: regions_lib.SiglipRegions,
                   out_dir: str, *, splits: Optional[Sequence[str]] = None,
                   process_index: Optional[int] = None, process_count: Optional[int] = None,
                   log=print) -> dict:
  """Extracts this host's unfinished shards into `out_dir`; returns counts and the rate."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index, process_count = jax.process_index(), jax.process_count()
  all_splits = source.splits()
  shards = [s for split in (splits or all_splits) for s in all_splits[split]]
  os.makedirs(out_dir, exist_ok=True)
  settings = {'source': source.name, 'shards': shards, **featurizer.settings()}
  info_path = os.path.join(out_dir, regions_lib.FEATURES_FILE)
  if os.path.exists(info_path):
    with open(info_path, encoding='utf-8') as f:
      stored = json.load(f)['settings']
    diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
    if diff:
      raise ExtractError(f'{out_dir} holds an extraction with other settings ((stored, new): '
                         f'{ {k: v for k, v in list(diff.items())[:3]} }); use another folder.')
  mine = [s for i, s in enumerate(shards) if i % process_count == process_index
          and not regions_lib.shard_done(out_dir, s)]
  if not os.path.exists(info_path) and process_index == 0:
    regions_lib._atomic(info_path, lambda f: f.write(json.dumps(  # pylint: disable=protected-access
        {'feature_dim': featurizer.feature_dim, 'settings': settings}, indent=1).encode()))
  images, skipped, start = 0, 0, time.time()
  for k, shard in enumerate(mine):
    samples, problems = source.read(shard)
    found, region_problems = featurizer(shard, samples) if samples else ({}, [])
    regions_lib.save_shard_regions(out_dir, shard, found, list(problems) + list(region_problems))
    images += len(found)
    skipped += len(problems) + len(region_problems)
    rate = images / max(time.time() - start, 1e-9)
    log(f'[extract] host {process_index}/{process_count}: shard {shard} ({k + 1}/{len(mine)}), '
        f'{images} images, {rate:.2f} img/s, {skipped} skipped')
  return {'host': process_index, 'shards_done': len(mine), 'shards_total': len(shards),
          'images': images, 'skipped': skipped, 'seconds': time.time() - start}
