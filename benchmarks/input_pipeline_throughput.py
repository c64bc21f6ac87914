"""Throughput of the pre-training input pipeline on synthetic image records.

  python -m benchmarks.input_pipeline_throughput            # base and tiny configs
  python -m benchmarks.input_pipeline_throughput --configs=tiny --batches=50

Writes a synthetic dataset (random region features, random captions and phrases) with
`storage.write_dataset` into a temporary folder, then times the full training pipeline
(random-access read, parse, tokenize, assemble, corrupt, batch) after a few warm-up batches and
prints examples/s per config.
"""

import dataclasses
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from input_pipeline import concepts
from input_pipeline import pretraining
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline import train_vocab


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  lengths: pretraining.Lengths
  feature_dim: int
  batch_size: int
  num_images: int
  regions_per_image: int
  captions_per_image: int = 5


CONFIGS = {
    'base': BenchConfig(pretraining.Lengths(35, 5, 20, 50), feature_dim=2054, batch_size=128,
                        num_images=200, regions_per_image=50),
    'tiny': BenchConfig(pretraining.Lengths(12, 4, 8, 8), feature_dim=134, batch_size=64,
                        num_images=200, regions_per_image=8),
}
_WORDS = [f'word{i}' for i in range(2000)]
_TAGS = [f'tag{i}' for i in range(300)]

def synthetic_records(config: BenchConfig, seed: int = 0):
  """Image records with random features, ~12-word captions and ~8 phrases per caption."""
  rng = np.random.default_rng(seed)
  n = config.regions_per_image
  for i in range(config.num_images):
    captions = [' '.join(rng.choice(_WORDS, rng.integers(8, 16)))
                for _ in range(config.captions_per_image)]
    phrases = [[tuple(rng.choice(_WORDS, rng.integers(1, 4))) for _ in range(8)]
               for _ in captions]
    yield {
        'image_id': f'synthetic{i}', 'image_png': b'', 'image_size': np.array([480, 640]),
        'region_features': rng.random((n, config.feature_dim), dtype=np.float32),
        'boxes': rng.random((n, 4), dtype=np.float32), 'tags': list(rng.choice(_TAGS, n)),
        'captions': captions, 'phrases': phrases,
        'phrase_regions': [list(rng.integers(-1, n, len(p))) for p in phrases],
    }


def run(name: str, config: BenchConfig, batches: int, warmup: int) -> float:
  """Writes the synthetic split and returns the measured examples/s."""
  with tempfile.TemporaryDirectory() as directory:
    train_vocab.write_vocab(_WORDS + _TAGS, f'{directory}/words.txt')
    start = time.perf_counter()
    storage.write_dataset(synthetic_records(config), directory, 'train', metadata={})
    write_s = time.perf_counter() - start
    tokenizer = tokenizers.load_tokenizer(f'{directory}/words.txt')
    concept_vocab = concepts.ConceptVocab.build(
        (p for r in synthetic_records(config) for p in r['phrases']), tokenizer, min_count=1)
    it = pretraining.create_pretraining_iterator(
        directory, 'train', tokenizer=tokenizer, concept_vocab=concept_vocab,
        lengths=config.lengths, batch_size=config.batch_size, seed=0, shuffle=True, repeat=True,
        corrupt=True, process_index=0, process_count=1)
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    elapsed = time.perf_counter() - start
  rate = batches * config.batch_size / elapsed
  print(f'{name}: {rate:,.0f} examples/s ({rate / config.batch_size:.1f} batches/s of '
        f'{config.batch_size}; {config.lengths}, D={config.feature_dim}; '
        f'wrote {config.num_images} images in {write_s:.1f} s)')
  return rate


def main(argv: Sequence[str]) -> None:
  del argv
  for name in flags.FLAGS.configs:
    run(name, CONFIGS[name], flags.FLAGS.batches, flags.FLAGS.warmup)


if __name__ == '__main__':
  flags.DEFINE_list('configs', ['base', 'tiny'], f'Configs to run: {list(CONFIGS)}.')
  flags.DEFINE_integer('batches', 20, 'Timed batches per config.')
  flags.DEFINE_integer('warmup', 3, 'Untimed batches before timing.')
  app.run(main)
