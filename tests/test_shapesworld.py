"""Tests of ShapesWorld: determinism, the record contract, gold phrases and links, downstream.

  python -m pytest tests/test_shapesworld.py -q
"""

import collections
import io
import re

import numpy as np
import pytest
from PIL import Image

from input_pipeline import features
from input_pipeline.shapesworld import downstream
from input_pipeline.shapesworld import generate
from input_pipeline.shapesworld import language
from input_pipeline.shapesworld import render
from input_pipeline.shapesworld import scenes

CONFIG = generate.ShapesWorldConfig(feature_dim=64, image_size=64)
S = scenes.ShapeObject
# Hand-made scene: a large red circle left of a small blue square, a small red triangle above the
# square; circle and triangle are diagonal (no clear relation).
HAND_SCENE = scenes.Scene((S('circle', 'red', 'large', 16.0, 40.0, 9.5, (220, 40, 40)),
                           S('square', 'blue', 'small', 48.0, 40.0, 6.0, (50, 90, 235)),
                           S('triangle', 'red', 'small', 48.0, 12.0, 6.0, (220, 40, 40))),
                          (40, 40, 40))


@pytest.fixture(scope='module')
def train_records():
  return list(generate.generate_records(CONFIG, 'train', 60))


def _nearest_colour(rgb) -> str:
  return min(scenes.COLOURS,
             key=lambda c: sum((a - int(b)) ** 2 for a, b in zip(scenes.COLOURS[c], rgb)))


def test_same_seed_same_bytes_and_different_indices_differ():
  a = generate.generate_record(CONFIG, 'train', 7)
  b = generate.generate_record(CONFIG, 'train', 7)
  assert a['image_png'] == b['image_png']
  np.testing.assert_array_equal(a['region_features'], b['region_features'])
  assert a['captions'] == b['captions'] and a['phrases'] == b['phrases']
  assert generate.generate_record(CONFIG, 'train', 8)['image_png'] != a['image_png']
  assert generate.generate_record(CONFIG, 'test', 7)['image_png'] != a['image_png']
  other_seed = generate.ShapesWorldConfig(feature_dim=64, seed=1)
  assert generate.generate_record(other_seed, 'train', 7)['image_png'] != a['image_png']


def test_records_follow_the_contract(train_records):
  for index, record in enumerate(train_records):
    assert tuple(record) == features.RECORD_KEYS
    assert record['image_id'] == generate.image_id('train', index)
    assert record['image_size'].dtype == np.int32 and record['image_size'].tolist() == [64, 64]
    image = np.asarray(Image.open(io.BytesIO(record['image_png'])).convert('RGB'))
    assert image.shape == (64, 64, 3)
    feats, boxes = record['region_features'], record['boxes']
    n = len(record['tags'])
    assert feats.dtype == np.float32 and feats.shape == (n, 64)
    assert boxes.dtype == np.float32 and boxes.shape == (n, 4)
    assert np.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 64
    expected = np.concatenate([boxes / 64, (boxes[:, 2:] - boxes[:, :2]) / 64], axis=1)
    np.testing.assert_allclose(feats[:, -features.NUM_BOX_DIMS:], expected, atol=1e-6)
    assert record['tags'].count(generate.BACKGROUND_TAG) == 1 + CONFIG.num_background_boxes
    assert [0.0, 0.0, 64.0, 64.0] in boxes.tolist()
    c = len(record['captions'])
    assert 1 <= c <= CONFIG.captions_per_image and len(set(record['captions'])) == c
    assert len(record['phrases']) == len(record['phrase_regions']) == c
    for tuples, links in zip(record['phrases'], record['phrase_regions']):
      assert len(tuples) == len(links)
      assert all(isinstance(t, tuple) and all(isinstance(w, str) for w in t) for t in tuples)
  assert np.mean([len(r['captions']) == 5 for r in train_records]) > 0.9


def test_phrases_are_expressed_in_their_caption(train_records):
  for record in train_records:
    for caption, tuples in zip(record['captions'], record['phrases']):
      tokens = language.tokenize(caption)
      text = ' '.join(tokens)
      for t in tuples:
        assert t[0] in tokens or t[0] == 'shape' and 'shapes' in tokens, (caption, t)
        if len(t) == 2:
          assert t[1] in tokens, (caption, t)
          assert re.search(rf'\b{t[1]} (\w+ )?{t[0]}\b', text) or f'{t[0]} is {t[1]}' in text \
              or t[0] == 'shape', (caption, t)
        if len(t) == 3:
          assert t[1] in text and t[2] in tokens, (caption, t)


def test_phrase_regions_point_at_the_right_shape(train_records):
  for index, record in enumerate(train_records):
    scene, _ = generate.generate_scene(CONFIG, 'train', index)
    _, extents = render.render_scene(scene, CONFIG.image_size)
    boxes = record['boxes']
    for tuples, links in zip(record['phrases'], record['phrase_regions']):
      for t, region in zip(tuples, links):
        if t[0] == 'shape':
          assert region == -1
          continue
        assert record['tags'][region] == t[0]
        # The linked box is the jittered extent of a shape of that kind (and colour, size).
        offsets = np.abs(extents - boxes[region]).max(1)
        obj = scene.objects[int(np.argmin(offsets))]
        assert offsets.min() <= CONFIG.box_jitter + 1e-4 and obj.kind == t[0]
        if len(t) == 2 and t[1] in scenes.COLOURS:
          assert obj.colour == t[1]
        if len(t) == 2 and t[1] in ('small', 'large', 'big'):
          assert obj.size == ('small' if t[1] == 'small' else 'large')
        if len(t) == 3:
          others = [o for o in scene.objects if o.kind == t[2] and o is not obj]
          assert any(scenes.relation(obj, o) == t[1] for o in others), (t, scene)


def test_rendered_centre_pixel_has_the_shape_colour():
  for index in range(40):
    scene, _ = generate.generate_scene(CONFIG, 'train', index)
    image, extents = render.render_scene(scene, 64)
    for obj, box in zip(scene.objects, extents):
      pixel = tuple(int(v) for v in image[int(obj.cy), int(obj.cx)])
      assert pixel == obj.rgb and _nearest_colour(pixel) == obj.colour
      x1, y1, x2, y2 = box
      assert x1 <= obj.cx <= x2 and y1 <= obj.cy <= y2
      assert x2 - x1 <= 2 * obj.radius + 1 and y2 - y1 <= 2 * obj.radius + 1


def test_shape_kinds_have_distinct_silhouettes():
  masks = {}
  dx = np.arange(-12, 12, dtype=np.float32)[None, :] + 0.5
  for kind in scenes.KINDS:
    masks[kind] = render.shape_mask(kind, dx, dx.T, 11.0)
    assert 0.25 < masks[kind].mean() < 0.8, kind
  for a in scenes.KINDS:
    for b in scenes.KINDS:
      if a < b:
        assert (masks[a] != masks[b]).sum() > 20, (a, b)


def test_vqa_answers_on_a_hand_checked_scene():
  expected = {
      'what color is the circle?': 'red', 'what color is the large circle?': 'red',
      'what color is the square?': 'blue', 'what color is the small square?': 'blue',
      'what color is the triangle?': 'red', 'what color is the small triangle?': 'red',
      'what shape is the blue object?': 'square',
      'what shape is the small blue object?': 'square',
      'what shape is the large red object?': 'circle',
      'what shape is the small red object?': 'triangle',
      'how many shapes are there?': '3', 'how many red shapes are there?': '2',
      'how many blue shapes are there?': '1', 'how many small shapes are there?': '2',
      'how many large shapes are there?': '1', 'how many circles are there?': '1',
      'how many triangles are there?': '1', 'how many squares are there?': '1',
      'where is the circle relative to the square?': 'left',
      'where is the square relative to the circle?': 'right',
      'where is the square relative to the triangle?': 'below',
      'where is the triangle relative to the square?': 'above',
  }
  present = {('circle', 'red', 'large'), ('square', 'blue', 'small'),
             ('triangle', 'red', 'small')}
  true_relations = {('circle', 'left of', 'square'), ('square', 'right of', 'circle'),
                    ('triangle', 'above', 'square'), ('square', 'below', 'triangle')}
  seen = collections.Counter()
  for seed in range(150):
    for question, answer in downstream.vqa_examples(HAND_SCENE, np.random.default_rng(seed), 4):
      seen[question.split()[0]] += 1
      if question in expected:
        assert answer == expected[question], question
      elif question.startswith('how many'):
        assert answer == '0', question  # every other colour / kind is absent
      elif question.startswith('is there'):
        words = question[:-1].split()[3:]
        kind, adjectives = words[-1], set(words[:-1])
        want = any(k == kind and adjectives <= {c, s} for k, c, s in present)
        assert answer == ('yes' if want else 'no'), question
      else:
        m = re.fullmatch(r'is the (\w+) (to the )?(left of|right of|above|below) the (\w+)\?',
                         question)
        assert m, question
        fact = (m.group(1), m.group(3), m.group(4))
        assert answer == ('yes' if fact in true_relations else 'no'), question
  assert set(seen) == {'what', 'how', 'is', 'where'}


def test_vqa_yes_no_is_balanced():
  examples = [e for i in range(150)
              for e in generate.generate_downstream(CONFIG, 'train', i, 'vqa')]
  assert all(len(e['answers']) == 1 and e['answers'][0][1] == 1.0 for e in examples)
  answers = [e['answers'][0][0] for e in examples]
  yes, no = answers.count('yes'), answers.count('no')
  assert yes > 30 and no > 30 and 0.6 < yes / no < 1.6
  assert all(a in generate.vqa_answers() for a in answers)


_NOUN_PHRASE = r'(?:(?:{}) )*(?:{})'.format('|'.join(scenes.COLOURS) + '|small|large|big',
                                           '|'.join(scenes.KINDS) + '|object')


def _matching(scene, words):
  """Objects matched by '[size] [colour] kind' (kind may be 'object')."""
  kind, adjectives = words[-1], words[:-1]
  size_of = {'small': 'small', 'large': 'large', 'big': 'large'}
  return [o for o in scene.objects if (kind == 'object' or o.kind == kind) and all(
      a == o.colour or size_of.get(a) == o.size for a in adjectives)]


def _referents(scene, expression):
  """An independent reading of a referring expression: the shapes it can denote."""
  m = re.fullmatch(r'the ([\w ]+?) (to the left of|left of|to the right of|right of|above|below)'
                   r' the ([\w ]+)', expression)
  if m:
    rel = m.group(2).replace('to the ', '')
    (landmark,) = _matching(scene, m.group(3).split())
    return [o for o in _matching(scene, m.group(1).split())
            if o is not landmark and scenes.loosely_holds(o, landmark, rel)]
  m = re.fullmatch(r'the ([\w ]+?) (on the|at the) (left|right|top|bottom)', expression)
  if m:
    candidates = _matching(scene, m.group(1).split())
    key = {'left': lambda o: o.cx, 'right': lambda o: -o.cx, 'top': lambda o: o.cy,
           'bottom': lambda o: -o.cy}[m.group(3)]
    best = min(candidates, key=key)
    return [o for o in candidates if key(o) <= key(best) + 1e-6]
  return _matching(scene, expression.split()[1:])


def test_referring_expressions_name_exactly_their_target():
  kinds = collections.Counter()
  for split in ('train', 'val'):
    for index in range(60):
      record = generate.generate_record(CONFIG, split, index)
      scene, _ = generate.generate_scene(CONFIG, split, index)
      for example in generate.generate_downstream(CONFIG, split, index, 're'):
        region = example['target_region']
        np.testing.assert_array_equal(example['target_box'], record['boxes'][region])
        (target,) = _referents(scene, example['expression'])
        assert record['tags'][region] == target.kind
        kinds[len(example['expression'].split())] += 1
  assert len(kinds) >= 3  # short and relational expressions both occur


def test_visual_entailment_labels():
  labels = collections.Counter()
  unobservable = set(downstream.MATERIALS + downstream.MOTIONS + downstream.PROPERTIES +
                     ('ago', 'outside'))
  for index in range(80):
    scene, _ = generate.generate_scene(CONFIG, 'train', index)
    for example in generate.generate_downstream(CONFIG, 'train', index, 've'):
      hypothesis, label = example['hypothesis'], example['label']
      labels[label] += 1
      words = set(hypothesis.split())
      if label == 'neutral':
        assert words & unobservable
        subject = re.match(r'(the|there is an?) ([\w ]+?) (is|was|outside)', hypothesis).group(2)
        assert _matching(scene, subject.split()), hypothesis  # about a shape that is present
      elif label == 'entailment':
        assert not words & unobservable
      m = re.fullmatch(rf'there is an? ({_NOUN_PHRASE})( made of \w+)?', hypothesis)
      if m and label != 'neutral':
        assert bool(_matching(scene, m.group(1).split())) == (label == 'entailment'), hypothesis
      m = re.fullmatch(r'there are (\w+) shapes', hypothesis)
      if m:
        correct = language.NUMBER_WORDS[len(scene.objects)] == m.group(1)
        assert correct == (label == 'entailment'), hypothesis
  assert min(labels.values()) > 40


def test_val_has_near_duplicate_groups():
  size = CONFIG.near_duplicate_group_size
  changes = collections.Counter()
  same_words_different_binding = 0
  for group in range(12):
    members = [generate.generate_scene(CONFIG, 'val', group * size + k) for k in range(size)]
    assert [generate.near_duplicate_group(CONFIG, 'val', group * size + k)
            for k in range(size)] == [group] * size
    base = members[0][0]
    assert members[0][1] == 'original' and len(base.objects) >= 2
    kinds = sorted(o.kind for o in base.objects)
    assert len({m[0].objects for m in members}) == size  # all distinct
    for scene, change in members[1:]:
      changes[change] += 1
      assert sorted(o.kind for o in scene.objects) == kinds
      if change in ('swap_colours', 'swap_kinds'):
        assert sorted(o.colour for o in scene.objects) == sorted(o.colour for o in base.objects)
        assert ({(o.kind, o.colour) for o in scene.objects} !=
                {(o.kind, o.colour) for o in base.objects})
        same_words_different_binding += 1
  assert len(changes) >= 4 and same_words_different_binding >= 2
  assert generate.near_duplicate_group(CONFIG, 'train', 5) is None


def test_word_list_covers_all_text():
  vocabulary = set(generate.word_list())
  for split in ('train', 'val'):
    for index in range(40):
      record = generate.generate_record(CONFIG, split, index)
      texts = list(record['captions']) + record['tags']
      texts += [e['question'] for e in generate.generate_downstream(CONFIG, split, index, 'vqa')]
      texts += [e['hypothesis'] for e in generate.generate_downstream(CONFIG, split, index, 've')]
      texts += [e['expression'] for e in generate.generate_downstream(CONFIG, split, index, 're')]
      for text in texts:
        assert set(language.tokenize(text)) <= vocabulary, text


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='split'):
    generate.generate_record(CONFIG, 'dev', 0)
  with pytest.raises(ValueError, match='feature_dim'):
    generate.ShapesWorldConfig(feature_dim=6)
  with pytest.raises(ValueError, match='image_size'):
    generate.ShapesWorldConfig(image_size=16)
  with pytest.raises(ValueError, match='task'):
    generate.generate_downstream(CONFIG, 'train', 0, 'captioning')
