"""A small image-record dataset keyed like a VinVL COCO import, for the task-importer tests."""

import os
from typing import Callable

import numpy as np

from input_pipeline import concepts
from input_pipeline import storage
from input_pipeline import train_vocab

BOXES_42 = np.array([[10, 20, 40, 60], [0, 0, 20, 40], [25, 40, 55, 80]], np.float32)


def constant_features(n: int) -> np.ndarray:
  return np.full((n, 8), 0.5, np.float32)


def image_record(image_id: str, boxes: np.ndarray,
                 features_of: Callable[[int], np.ndarray] = constant_features) -> dict:
  """An image record with len(boxes) regions of 8-d features `features_of(n)`."""
  n = len(boxes)
  return {'image_id': image_id, 'image_png': b'', 'image_size': np.array([100, 100], np.int32),
          'region_features': features_of(n), 'boxes': boxes, 'tags': ['dog'] * n,
          'captions': ['a dog'], 'phrases': [[('dog',)]], 'phrase_regions': [[0]]}


def write_coco_images(directory: str,
                      features_of: Callable[[int], np.ndarray] = constant_features) -> None:
  """Split 'train' of `directory`: images 'COCO_train2014_000000000042' (3 regions) and '7'
  (1 region), ids that normalise to 42 and 7, with a word and concept vocabulary."""
  train_vocab.write_vocab(['a', 'dog', 'is', 'what', 'color', 'the', 'red'],
                          os.path.join(directory, 'words.txt'))
  storage.write_dataset([image_record('COCO_train2014_000000000042', BOXES_42, features_of),
                         image_record('7', BOXES_42[:1], features_of)], directory, 'train',
                        metadata={})
  storage.save_vocabularies(directory, os.path.join(directory, 'words.txt'),
                            concepts.ConceptVocab({6: ('dog',)}, word_vocab_size=12))
  os.remove(os.path.join(directory, 'words.txt'))
