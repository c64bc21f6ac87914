r"""Region-extraction throughput of a SigLIP vision tower: images/s and FLOPs per image.

  python -m benchmarks.siglip_extraction --image_size=224 --batch_size=8 --batches=5

Runs mvp_jax.vision.extractor.RegionExtractor (B/16 by default, random weights) on random uint8
images: the patch encoder, grid pooling (7 x 7 + 1 regions) and, unless --notags, the MAP head once
per region and sigmoid scores against 1,600 random unit label embeddings (the default label count).
FLOPs come from XLA's cost analysis of the compiled program. Image decoding is not included (see
--decode for a separate PIL decode + resize rate of one 640 x 480 JPEG).
"""

import io
import sys
import time

import numpy as np


def main(argv=None) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  flags.DEFINE_integer('image_size', 224, 'input side', flag_values=fv)
  flags.DEFINE_integer('batch_size', 8, 'images per batch', flag_values=fv)
  flags.DEFINE_integer('batches', 5, 'timed batches (after one warm-up)', flag_values=fv)
  flags.DEFINE_integer('grid', 7, 'grid cells per side', flag_values=fv)
  flags.DEFINE_bool('tags', True, 'score regions against 1,600 labels', flag_values=fv)
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype', flag_values=fv)
  flags.DEFINE_bool('decode', True, 'also time PIL decode + resize', flag_values=fv)
  fv(list(sys.argv if argv is None else ['siglip_extraction'] + list(argv)))

  import jax  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import config as config_lib  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  from mvp_jax.vision import towers  # pylint: disable=g-import-not-at-top

  config = config_lib.b16(fv.image_size, dtype=fv.dtype)
  params = towers.init_params(config, jax.random.PRNGKey(0))
  labels = None
  if fv.tags:
    labels = np.random.default_rng(0).standard_normal((1600, config.text.projection_size))
    labels = (labels / np.linalg.norm(labels, axis=1, keepdims=True)).astype(np.float32)
  extractor = extractor_lib.RegionExtractor(
      config, params, grid_cells=fv.grid, image_size=fv.image_size, batch_size=fv.batch_size,
      label_embeddings=labels, devices=jax.devices()[:1])
  cost = extractor.lowered().compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', 0.0)) / fv.batch_size
  pixels = np.random.default_rng(1).integers(0, 256, (fv.batch_size, fv.image_size,
                                                      fv.image_size, 3), dtype=np.uint8)
  extractor(pixels)  # compile + warm up
  times = []
  for _ in range(fv.batches):
    start = time.perf_counter()
    extractor(pixels)
    times.append(time.perf_counter() - start)
  rates = [fv.batch_size / t for t in times]
  print(f'SigLIP B/16 @ {fv.image_size}px, {extractor.num_grid_regions} grid regions, tags='
        f'{fv.tags}, dtype={fv.dtype}, batch {fv.batch_size} on {jax.devices()[0].device_kind}')
  print(f'  images/s per batch: min {min(rates):.2f}  median {np.median(rates):.2f}  '
        f'max {max(rates):.2f}')
  print(f'  FLOPs per image (XLA cost analysis): {flops / 1e9:.2f} GFLOP')
  if fv.decode:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from mvp_jax.vision import images  # pylint: disable=g-import-not-at-top
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
                    ).save(data, 'JPEG', quality=90)
    start, n = time.perf_counter(), 20
    for _ in range(n):
      images.decode(data.getvalue(), 'bench.jpg', fv.image_size)
    print(f'  PIL decode + resize of a 640x480 JPEG: {n / (time.perf_counter() - start):.1f} '
          'images/s on one thread')
  return 0


if __name__ == '__main__':
  sys.exit(main())
