r"""Measures the record-writing rate (records/s) of a webdataset build from given regions.

  python -m input_pipeline.sources.benchmark --shards=8 --per_shard=250 --workers=1,2
  python -m input_pipeline.sources.benchmark --workers=0 --file_format=array_record   # one format

Writes `shards` img2dataset-style tars of 256 x 256 JPEGs with one caption each, and their
regions as a GivenRegions folder (R = 50 regions of 768 + 6 dims, SigLIP B/16 grid mode), then
times the TFDS build (read tar, built-in phrases, validate, serialise, write tfrecord and
array_record; `--file_format=array_record`: array_record only) in one Python process and on
Beam's DirectRunner with each number of worker processes. Prints one line per run: formats,
workers, records, seconds, records/s, records/s per worker.
"""

import io
import json
import os
import sys
import tarfile
import tempfile
import time
from typing import Optional, Sequence

import numpy as np


def write_fixture(folder: str, shards: int, per_shard: int, regions: int = 50,
                  dim: int = 774) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from input_pipeline.sources import regions as regions_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline.sources import samples  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  words = 'a man woman dog rides holds brown red horse umbrella on the beach park in'.split()
  os.makedirs(os.path.join(folder, 'features'))
  with open(os.path.join(folder, 'features', regions_lib.FEATURES_FILE), 'w') as f:
    json.dump({'feature_dim': dim, 'settings': {'kind': 'benchmark'}}, f)
  for s in range(shards):
    found = {}
    with tarfile.open(os.path.join(folder, f'{s:05d}.tar'), 'w') as tar:
      for k in range(per_shard):
        key = f'{s:05d}{k:04d}'
        data = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)).save(data, 'JPEG')
        for ext, payload in (('jpg', data.getvalue()),
                             ('txt', ' '.join(rng.choice(words, 12)).encode())):
          info = tarfile.TarInfo(f'{key}.{ext}')
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
        found[key] = samples.Regions((256, 256), rng.normal(size=(regions, dim)).astype(
            np.float32), np.tile(np.float32([0, 0, 256, 256]), (regions, 1)), ['dog'] * regions)
    regions_lib.save_shard_regions(os.path.join(folder, 'features'), f'{s:05d}', found, [])


def run(folder: str, workers: int, file_format: Optional[str] = None) -> tuple[int, float]:
  """(records, seconds) of one build; workers 0 = the plain Python path."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from input_pipeline.sources import builders  # pylint: disable=import-outside-toplevel
  from input_pipeline.sources import regions  # pylint: disable=import-outside-toplevel
  out = tempfile.mkdtemp(dir=folder)
  builder = builders.WebdatasetShards(
      shards=[os.path.join(folder, '*.tar')], regions=regions.GivenRegions(
          os.path.join(folder, 'features')), data_dir=out, use_beam=workers > 0,
      file_format=file_format)
  options = None
  if workers:
    from input_pipeline import optional  # pylint: disable=import-outside-toplevel
    beam = optional.require('apache_beam', 'The Beam benchmark')
    options = beam.options.pipeline_options.PipelineOptions(  # flags=[]: not sys.argv
        flags=[], direct_num_workers=workers, direct_running_mode='multi_processing')
  start = time.time()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      beam_options=options))
  return builder.info.splits['train'].num_examples, time.time() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_integer('shards', 8, 'tar shards', flag_values=fv)
  flags.DEFINE_integer('per_shard', 250, 'samples per shard', flag_values=fv)
  flags.DEFINE_list('workers', ['0', '1', '2'], '0 = plain Python, n = Beam with n processes',
                    flag_values=fv)
  flags.DEFINE_enum('file_format', None, ['tfrecord', 'array_record'], 'Main format (default '
                    'tfrecord, written beside array_record; array_record: that one only).',
                    flag_values=fv)
  fv(list(sys.argv if argv is None else ['benchmark'] + list(argv)))
  with tempfile.TemporaryDirectory() as folder:
    write_fixture(folder, fv.shards, fv.per_shard)
    for workers in (int(w) for w in fv.workers):
      records, seconds = run(folder, workers, fv.file_format)
      rate = records / seconds
      print(f'file_format={fv.file_format or "tfrecord+array_record"} workers={workers} '
            f'records={records} seconds={seconds:.1f} records/s={rate:.1f} '
            f'per_worker={rate / max(workers, 1):.1f}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
