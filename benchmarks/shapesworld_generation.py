"""Throughput of ShapesWorld record generation on one CPU core.

  OPENBLAS_NUM_THREADS=1 python -m benchmarks.shapesworld_generation [--num_images=2000]

Prints records/s (wall clock and per CPU second, which is steadier on a shared machine) and
captions/s for feature_dim 134 and 2054, and the time spent in each stage (scene sampling,
rendering, PNG, regions + features, captions) for feature_dim 134. Single-threaded BLAS keeps it
to one core.
"""

import time
from typing import Sequence

from absl import app
from absl import flags

from input_pipeline import region_features
from input_pipeline.shapesworld import generate
from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import render


def _records_per_second(config: generate.ShapesWorldConfig, num_images: int) -> tuple:
  """(records per wall-clock second, records per CPU second, captions per wall-clock second)."""
  wall, cpu = time.perf_counter(), time.process_time()
  captions = sum(len(r['captions']) for r in generate.generate_records(config, 'train',
                                                                       num_images))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return num_images / wall, num_images / cpu, captions / wall


def _stage_microseconds(config: generate.ShapesWorldConfig, num_images: int) -> dict:
  totals = dict.fromkeys(('scene', 'render', 'png', 'regions+features', 'captions'), 0.0)
  for index in range(num_images):
    t0 = time.perf_counter()
    rng = generate._rng(config, 'train', index, 0)  # pylint: disable=protected-access
    scene, _ = generate.generate_scene(config, 'train', index, rng)
    t1 = time.perf_counter()
    image, extents = render.render_scene(scene, config.image_size)
    t2 = time.perf_counter()
    render.encode_png(image, config.png_level)
    t3 = time.perf_counter()
    boxes, _ = generate._regions(config, rng, extents)  # pylint: disable=protected-access
    region_features.extract_region_features(image, boxes, config.feature_dim)
    t4 = time.perf_counter()
    language.make_captions(scene, rng, config.captions_per_image)
    t5 = time.perf_counter()
    for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
      totals[key] += seconds
  return {k: round(v / num_images * 1e6, 1) for k, v in totals.items()}


def main(argv: Sequence[str]) -> None:
  del argv
  args = flags.FLAGS
  for feature_dim in (134, 2054):
    config = generate.ShapesWorldConfig(feature_dim=feature_dim, image_size=args.image_size)
    _records_per_second(config, 50)  # warm-up: caches, projection matrix
    records, records_cpu, captions = _records_per_second(config, args.num_images)
    print(f'feature_dim={feature_dim:5d} image_size={args.image_size}: {records:6.0f} records/s '
          f'wall ({records_cpu:6.0f} per CPU second, {captions:6.0f} captions/s)')
  config = generate.ShapesWorldConfig(feature_dim=134, image_size=args.image_size)
  print('microseconds per record by stage (feature_dim=134):',
        _stage_microseconds(config, min(args.num_images, 1000)))


if __name__ == '__main__':
  flags.DEFINE_integer('num_images', 2000, 'Images generated per feature_dim.')
  flags.DEFINE_integer('image_size', 64, 'Image side in pixels.')
  app.run(main)
