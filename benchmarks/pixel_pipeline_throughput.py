r"""Throughput of the pixel-mode pre-training input pipeline (decode, crop, flip, resize, normalise).

  python -m benchmarks.pixel_pipeline_throughput                 # 64 and 224
  python -m benchmarks.pixel_pipeline_throughput --configs=224 --batches=10 --augment=False
  python -m benchmarks.pixel_pipeline_throughput --configs=224 --resize_method=bilinear

Writes synthetic image records with `storage.write_dataset` into a temporary folder: '64' holds
64 x 64 PNGs (ShapesWorld's renderings, regions 7, tiny lengths, batch 64), '224' holds
480 x 640 JPEGs (COCO-sized photographs of smooth random texture, 50 regions, base lengths,
batch 128) resized to 224. It then times the whole training pipeline (random-access read, parse,
image decode, random crop + flip when `--augment`, resize, normalise, tokenize, assemble,
corrupt, batch) after warm-up batches and prints examples/s, to set against the training step's
examples/s (`python -m benchmarks.train_throughput`): the pipeline must outrun the step.
"""

import dataclasses
import io
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from benchmarks import input_pipeline_throughput as features_bench
from input_pipeline import concepts
from input_pipeline import ops
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline import train_vocab
from input_pipeline.shapesworld import generate


@dataclasses.dataclass(frozen=True)
class PixelBenchConfig:
  records: features_bench.BenchConfig
  image_size: int  # the tower's resolution
  source_shape: tuple  # (height, width) of the stored images


CONFIGS = {
    '64': PixelBenchConfig(features_bench.BenchConfig(
        pretraining.Lengths(20, 6, 8, 7), feature_dim=6, batch_size=64, num_images=200,
        regions_per_image=7), image_size=64, source_shape=(64, 64)),
    '224': PixelBenchConfig(features_bench.BenchConfig(
        pretraining.Lengths(35, 5, 20, 50), feature_dim=6, batch_size=128, num_images=200,
        regions_per_image=50), image_size=224, source_shape=(480, 640)),
}


def _photo(rng: np.random.Generator, height: int, width: int) -> bytes:
  """JPEG (quality 90) of smooth random texture with fine noise, like a photograph's size."""
  coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
  image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def pixel_records(config: PixelBenchConfig, seed: int = 0):
  """The synthetic records of `features_bench`, with an image and boxes inside it."""
  rng = np.random.default_rng(seed + 1)
  height, width = config.source_shape
  world = generate.ShapesWorldConfig(image_size=height, feature_dim=7)
  for i, record in enumerate(features_bench.synthetic_records(config.records, seed)):
    if height == 64:
      png = generate.generate_record(world, 'train', i)['image_png']
    else:
      png = _photo(rng, height, width)
    corners = rng.random((len(record['boxes']), 2)) * [width * 0.7, height * 0.7]
    sizes = (0.1 + 0.2 * rng.random((len(record['boxes']), 2))) * [width, height]
    boxes = np.concatenate([corners, corners + sizes], 1).astype(np.float32)
    yield {**record, 'image_png': png, 'image_size': np.array([height, width], np.int32),
           'boxes': boxes, 'region_features': np.concatenate(
               [boxes / [width, height, width, height], sizes / [width, height]],
               1).astype(np.float32)}


def run(name: str, config: PixelBenchConfig, batches: int, warmup: int, augment: bool,
        resize_method: str = 'bicubic') -> float:
  """Writes the synthetic split and returns the measured examples/s."""
  records = config.records
  with tempfile.TemporaryDirectory() as directory:
    train_vocab.write_vocab(features_bench._WORDS + features_bench._TAGS,  # pylint: disable=protected-access
                            f'{directory}/words.txt')
    storage.write_dataset(pixel_records(config), directory, 'train', metadata={})
    tokenizer = tokenizers.load_tokenizer(f'{directory}/words.txt')
    concept_vocab = concepts.ConceptVocab.build(
        (p for r in features_bench.synthetic_records(records) for p in r['phrases']), tokenizer,
        min_count=1)
    spec = ops.pixel_preprocess(pretraining.default_preprocess(True),
                                image_size=config.image_size,
                                augment=ops.PIXEL_AUGMENT['pretrain'] if augment else '',
                                resize_method=resize_method)
    it = pretraining.create_pretraining_iterator(
        directory, 'train', tokenizer=tokenizer, concept_vocab=concept_vocab,
        lengths=records.lengths, batch_size=records.batch_size, seed=0, shuffle=True,
        repeat=True, process_index=0, process_count=1, preprocess=spec)
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(it)
    elapsed = time.perf_counter() - start
  rate = batches * records.batch_size / elapsed
  print(f'{name}: {rate:,.0f} examples/s ({rate / records.batch_size:.2f} batches/s of '
        f'{records.batch_size}; pixels {batch["pixels"].shape[1:]} from '
        f'{config.source_shape} {"PNG" if config.source_shape[0] == 64 else "JPEG"}, '
        f'augment={augment}, {resize_method}; {records.lengths})')
  return rate


def main(argv: Sequence[str]) -> None:
  del argv
  for name in flags.FLAGS.configs:
    run(name, CONFIGS[name], flags.FLAGS.batches, flags.FLAGS.warmup, flags.FLAGS.augment,
        flags.FLAGS.resize_method)


if __name__ == '__main__':
  flags.DEFINE_list('configs', ['64', '224'], f'Configs to run: {list(CONFIGS)}.')
  flags.DEFINE_integer('batches', 20, 'Timed batches per config.')
  flags.DEFINE_integer('warmup', 3, 'Untimed batches before timing.')
  flags.DEFINE_bool('augment', True, 'Random crop + flip (training); else resize only.')
  flags.DEFINE_enum('resize_method', 'bicubic', ['bicubic', 'bilinear'], 'Resampling.')
  app.run(main)
