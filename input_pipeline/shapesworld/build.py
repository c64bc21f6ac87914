"""Writes ShapesWorld to disk as a dataset directory the pre-training pipeline reads.

  python -m input_pipeline.shapesworld.build --out_dir=/tmp/shapesworld --num_train=8000

Produces `vocab.txt` (a compact WordPiece vocabulary of every ShapesWorld word), `id2phrase.json`
(concepts seen in at least `min_concept_count` training captions), and the `train` / `val` /
`test` splits (image records, `input_pipeline.storage`). Every record holds its rendering as a
PNG and its regions' pixel boxes (the shapes, the whole image and random boxes, as a detector
would give them) beside the hand-made region features, so the same directory serves the
features path and pixel mode (`config.data.pixels=True`: the vision tower reads the PNG and the
boxes in the training graph, input_pipeline/features.py). A directory that is already complete
with the same configuration is left untouched, so re-running is free; a different configuration
in the same directory is an error rather than a silent mix.
"""

import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import flags
from absl import logging

from input_pipeline import cli
from input_pipeline import concepts
from input_pipeline import ownership
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline import train_vocab
from input_pipeline.shapesworld import generate

BUILD_FILE = ownership.SHAPESWORLD_BUILD_FILE


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  world: generate.ShapesWorldConfig = generate.ShapesWorldConfig()
  num_train_images: int = 8000
  num_val_images: int = 200
  num_test_images: int = 0
  min_concept_count: int = 5


def config_from_dict(values: Optional[Mapping[str, Any]]) -> BuildConfig:
  """BuildConfig from a flat dict: split sizes, `min_concept_count`, and ShapesWorldConfig fields."""
  values = dict(values or {})
  build_fields = {f.name for f in dataclasses.fields(BuildConfig)} - {'world'}
  world_fields = {f.name for f in dataclasses.fields(generate.ShapesWorldConfig)}
  unknown = sorted(set(values) - build_fields - world_fields)
  if unknown:
    raise ValueError(f'Unknown ShapesWorld options {unknown}; known: '
                     f'{sorted(build_fields | world_fields)}.')
  world = generate.ShapesWorldConfig(**{k: v for k, v in values.items() if k in world_fields})
  return BuildConfig(world=world, **{k: v for k, v in values.items() if k in build_fields})


def _describe(config: BuildConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def build_dataset(directory: str, config: BuildConfig) -> str:
  """Generates (or verifies) ShapesWorld in `directory`; returns the directory."""
  marker = os.path.join(directory, BUILD_FILE)
  wanted = _describe(config)
  if os.path.exists(marker):
    with open(marker, encoding='utf-8') as f:
      existing = json.load(f)
    if existing != wanted:
      raise ValueError(f'{directory} holds ShapesWorld built with {existing}, not {wanted}; '
                       'use another data.directory or delete it.')
    return directory
  ownership.claim(directory, 'shapesworld')  # Refuses a folder it did not write, unchanged.
  vocab_path = os.path.join(directory, 'vocab.txt')
  train_vocab.write_vocab(generate.word_list(), vocab_path)
  tokenizer = tokenizers.load_tokenizer(vocab_path)
  splits = [('train', config.num_train_images), ('val', config.num_val_images),
            ('test', config.num_test_images)]
  concept_vocab = None
  for split, count in splits:
    if count <= 0:
      continue
    logging.info('ShapesWorld: writing %d %s images to %s.', count, split, directory)
    records = generate.generate_records(config.world, split, count)
    if split == 'train':
      records = list(records)
      concept_vocab = concepts.ConceptVocab.build(
          (phrases for r in records for phrases in r['phrases']), tokenizer,
          config.min_concept_count)
      storage.save_vocabularies(directory, vocab_path, concept_vocab)
    # A split left by an interrupted build of this folder is replaced.
    storage.write_dataset(records, directory, split, metadata={'source': 'shapesworld'},
                          overwrite=True)
  if concept_vocab is None:
    raise ValueError('ShapesWorld needs num_train_images > 0 to build its concept vocabulary.')
  with open(marker + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(wanted, f, indent=1)
  os.replace(marker + '.tmp', marker)  # written last: the directory is complete
  return directory


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('out_dir', None, 'Output dataset directory.', flag_values=v)
  flags.DEFINE_integer('num_train', 8000, 'Training images.', flag_values=v)
  flags.DEFINE_integer('num_val', 200, 'Validation images.', flag_values=v)
  flags.DEFINE_integer('num_test', 200, 'Test images.', flag_values=v)
  flags.DEFINE_integer('feature_dim', 134, 'Region feature width (2054 = VinVL).', flag_values=v)
  flags.DEFINE_integer('seed', 0, 'Generation seed.', flag_values=v)


def _run(a: flags.FlagValues) -> int:
  config = BuildConfig(world=generate.ShapesWorldConfig(feature_dim=a.feature_dim, seed=a.seed),
                       num_train_images=a.num_train, num_val_images=a.num_val,
                       num_test_images=a.num_test)
  print(build_dataset(a.out_dir, config))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  # Flags live on their own FlagValues: importing this module defines none (a user's --seed
  # never clashes with ours).
  return cli.run('python -m input_pipeline.shapesworld.build', argv, _define, _run,
                 required=('out_dir',), what='build')


if __name__ == '__main__':
  sys.exit(main())
