"""The truth of ShapesWorld (input_pipeline/shapesworld/truth.py) and its batch columns
(input_pipeline/true_matches.py), on hand-made scenes whose true captions are known."""

import numpy as np
import pytest

from input_pipeline import true_matches
from input_pipeline.shapesworld import build
from input_pipeline.shapesworld import generate
from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import scenes
from input_pipeline.shapesworld import truth


def shape(kind, colour, size, cx, cy):
  return scenes.ShapeObject(kind, colour, size, cx, cy, 6.0, scenes.COLOURS[colour])


def scene(*objects):
  return scenes.Scene(tuple(objects), (50, 50, 50))


# A small red circle clearly left of a large blue square.
CIRCLE_SQUARE = scene(shape('circle', 'red', 'small', 10, 30),
                      shape('square', 'blue', 'large', 50, 30))
TRUE_OF_CIRCLE_SQUARE = [
    'a circle', 'a red circle', 'a small red circle', 'there is a small circle', 'a big square',
    'the circle is red', 'the square is blue', 'a red circle and a blue square',
    'a blue square and a circle', 'a red circle to the left of a square',
    'a big square right of a circle', 'the blue square is right of the red circle',
    'to the left of a blue square there is a red circle',
    'a large blue square is to the right of a circle',
    'two shapes: a blue square and a red circle', 'two shapes: a circle and a large square',
    'there are two shapes']
FALSE_OF_CIRCLE_SQUARE = [
    'a blue circle', 'a large circle', 'a star', 'the circle is blue',
    'a circle and a circle', 'a red circle and a red square', 'a circle right of a square',
    'a circle above a square', 'the square is left of the circle',
    'to the right of a square there is a circle', 'there are three shapes',
    'two shapes: a red circle and a red square', 'three shapes: a circle, a square and a star',
    'two shapes: a circle and a circle']


@pytest.mark.parametrize('caption', TRUE_OF_CIRCLE_SQUARE)
def test_true_captions(caption):
  assert truth.is_true(caption, CIRCLE_SQUARE)


@pytest.mark.parametrize('caption', FALSE_OF_CIRCLE_SQUARE)
def test_false_captions(caption):
  assert not truth.is_true(caption, CIRCLE_SQUARE)


def test_uniqueness_repetition_and_diagonal_relations():
  two_circles = scene(shape('circle', 'red', 'small', 10, 10),
                      shape('circle', 'blue', 'small', 50, 10))
  assert not truth.is_true('the circle is red', two_circles)  # two circles: no unique one
  assert truth.is_true('a circle and a circle', two_circles)
  assert truth.is_true('a red circle left of a blue circle', two_circles)
  assert not truth.is_true('a blue circle left of a red circle', two_circles)
  diagonal = scene(shape('circle', 'red', 'small', 10, 10),
                   shape('square', 'red', 'small', 30, 28))
  for caption in ('a circle left of a square', 'a circle above a square',
                  'a square below a circle', 'a square right of a circle'):
    assert not truth.is_true(caption, diagonal)  # no clear relation is ever stated


def test_equivalent_captions_share_a_meaning():
  same = ['a big red circle', 'there is a large red circle']
  assert len({truth.parse_caption(c) for c in same}) == 1
  left = ['a circle left of a square', 'a square to the right of a circle',
          'to the left of a square there is a circle', 'the square is right of the circle']
  assert len({truth.parse_caption(c) for c in left}) == 1
  assert truth.parse_caption('a red circle and a star') == truth.parse_caption(
      'a star and a red circle')
  with pytest.raises(ValueError, match='not a ShapesWorld caption'):
    truth.parse_caption('a dog on a horse')


def test_every_generated_caption_is_true_of_its_scene_only_where_it_should_be():
  config = generate.ShapesWorldConfig(feature_dim=16, captions_per_image=5)
  swaps = 0
  for index in range(40):
    own, _ = generate.generate_scene(config, 'val', index)
    for text in language.make_captions(own, np.random.default_rng(index), 5)[0]:
      assert truth.is_true(text, own), text
    base, _ = generate.generate_scene(config, 'val', index - index % 4)
    for i, a in enumerate(base.objects):  # a binding changed by a swap is false in the variant
      for b in base.objects[i + 1:]:
        caption = f'a {a.colour} {a.kind} and a {b.colour} {b.kind}'
        if not truth.is_true(caption, own):
          swaps += 1
  assert swaps > 0


def test_split_truth_and_batch_columns():
  other = scene(shape('star', 'red', 'small', 10, 10))
  captions = [['a red circle', 'there are two shapes'], ['a red star', 'a small red circle']]
  with pytest.raises(ValueError, match='image 1: its own captions'):
    truth.split_truth([CIRCLE_SQUARE, other], captions)
  captions = [['a red circle', 'a small red circle'], ['a red star', 'a small star']]
  table = truth.split_truth([CIRCLE_SQUARE, other], captions)
  matches = true_matches.from_table(table, 'test')
  np.testing.assert_array_equal(matches.matrix(), [[1, 0], [1, 0], [0, 1], [0, 1]])
  columns = matches.columns(np.array([0, 3, -1]), np.array([1, 0, -1]))
  np.testing.assert_array_equal(columns['caption_meaning'], [0, 3, -1])
  np.testing.assert_array_equal(columns['image_meanings'], [[2, 3], [0, 1], [-1, -1]])
  with pytest.raises(ValueError, match='image 0 has 2 true meanings, more than the bound 1'):
    true_matches.from_table(table, 'test', max_width=1)


def test_duplicate_captions_are_true_of_each_others_images():
  captions = [['A dog.', 'a cat'], ['a  dog'], ['a bird']]
  matches = true_matches.from_table(true_matches.duplicate_truth(captions), 'dup')
  np.testing.assert_array_equal(matches.matrix(), [[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])


def test_build_writes_the_truth_of_every_split(tmp_path):
  config = build.BuildConfig(world=generate.ShapesWorldConfig(feature_dim=16, image_size=32),
                             num_train_images=6, num_val_images=8, min_concept_count=1)
  build.build_dataset(str(tmp_path), config)
  for split, count in (('train', 6), ('val', 8)):
    matches = true_matches.load(str(tmp_path), split, 'truth')
    per_image = [len(generate.generate_record(config.world, split, i)['captions'])
                 for i in range(count)]
    own_image = np.repeat(np.arange(count), per_image)
    assert matches.matrix().shape == (len(own_image), count)
    assert matches.matrix()[np.arange(len(own_image)), own_image].all()
  true_matches.truth_path(str(tmp_path), 'val').unlink()
  build.build_dataset(str(tmp_path), config)  # a complete folder gets its missing truth back
  assert true_matches.truth_path(str(tmp_path), 'val').exists()
