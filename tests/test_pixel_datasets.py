"""Pixel-mode datasets: ShapesWorld, custom --pixels and the one-shape VQA set, through the
trainer's iterator (mvp_jax/data.py with data.pixels=True)."""

import io
import json
import os

from absl import app
import ml_collections
import numpy as np
from PIL import Image
import pytest

from input_pipeline import features
from input_pipeline import storage
from input_pipeline import true_matches
from input_pipeline.shapesworld import build
from input_pipeline.shapesworld import generate
from input_pipeline.shapesworld import scenes
from input_pipeline.tasks import custom
from input_pipeline.tasks import one_shape_vqa
from mvp_jax import data


def _data_config(**overrides):
  config = dict(kind='shapesworld', directory='', max_seq_length=20, max_phrases=6,
                max_tag_length=8, max_img_seq_length=7, mask_prob=0.15, pixels=True,
                image_size=64, image_norm='minus_one_to_one', augment=None)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def _iterator(config, directory, split, task='pretrain', train=False, batch=4, seed=0, **kw):
  return data.create_iterator(config, directory, split, task=task, per_host_batch_size=batch,
                              seed=seed, train=train, **kw)


def _decoded(png: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'), np.float32)


@pytest.fixture(scope='module')
def shapesworld(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('sw'))
  world = generate.ShapesWorldConfig(feature_dim=16, captions_per_image=2)
  build.build_dataset(directory, build.BuildConfig(world=world, num_train_images=8,
                                                   num_val_images=4, min_concept_count=1))
  return directory, world


def test_shapesworld_pixels_read_back_through_the_pipeline(shapesworld):
  directory, world = shapesworld
  batch = next(_iterator(_data_config(), directory, 'val'))
  # Evaluation of a ShapesWorld split also carries its truth columns (input_pipeline/true_matches).
  assert set(batch) == set(features.PIXEL_BATCH_KEYS) | set(true_matches.COLUMNS)
  assert 'img_feats' not in batch
  assert batch['pixels'].shape == (4, 64, 64, 3) and batch['pixels'].dtype == np.float32
  assert batch['region_boxes'].shape == (4, 7, 4)
  for row in range(4):
    record = generate.generate_record(world, 'val', int(batch['image_index'][row]))
    np.testing.assert_allclose(batch['pixels'][row], _decoded(record['image_png']) / 127.5 - 1,
                               atol=1e-6)
    n = len(record['boxes'])
    np.testing.assert_allclose(batch['region_boxes'][row, :n], record['boxes'] / 64, atol=1e-6)
    np.testing.assert_array_equal(batch['region_boxes'][row, n:], 0)
    assert batch['attention_mask_b'][row, 8:].sum() == n
  # Training: augmented (boxes move with the crop/flip), and the same batches after a resume.
  train = _iterator(_data_config(), directory, 'train', train=True, seed=5)
  first = next(train)
  state = train.get_state()
  later = [next(train), next(train)]
  resumed = _iterator(_data_config(), directory, 'train', train=True, seed=5)
  resumed.set_state(state)
  for want in later:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  moved = [not np.allclose(first['region_boxes'][r, :len(record['boxes'])], record['boxes'] / 64)
           for r, record in enumerate(generate.generate_record(world, 'train', int(i))
                                      for i in first['image_index'])]
  assert sum(moved) >= 3


def _png_file(path, image):
  Image.fromarray(image).save(path)


def test_custom_pixels_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (32, 48, 3), np.uint8), rng.integers(0, 256, (40, 40, 3),
                                                                         np.uint8)]
  for i, image in enumerate(images):
    _png_file(tmp_path / f'i{i}.png', image)
  lines = [{'image': 'i0.png', 'text': 'a thing on the left', 'boxes': [[4, 2, 20, 30]]},
           {'image': 'i1.png', 'text': 'another thing'}]
  (tmp_path / 'train.jsonl').write_text(''.join(json.dumps(l) + '\n' for l in lines))
  out = str(tmp_path / 'ds')
  assert custom.main(['--task=retrieval', f'--train={tmp_path / "train.jsonl"}',
                      f'--out_dir={out}', '--grid=2', '--vocab_size=100', '--pixels']) == 0
  source = storage.RecordSource(out, 'train')
  assert source.feature_dim == features.NUM_BOX_DIMS  # no hand-made features: box numbers only
  config = _data_config(image_size=32, image_norm='zero_to_one', kind='records')
  batch = next(_iterator(config, out, 'train', task='retrieval', batch=2))
  first = np.asarray(Image.fromarray(images[0]).resize((32, 32), Image.BICUBIC), np.float32)
  assert np.abs(batch['pixels'][0] * 255 - first).max() < 1.5
  np.testing.assert_allclose(batch['region_boxes'][0, :1], [[4 / 48, 2 / 32, 20 / 48, 30 / 32]],
                             atol=1e-6)
  grid = [[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1], [0, 0, 1, 1]]
  np.testing.assert_allclose(batch['region_boxes'][1, :5], grid, atol=1e-6)
  assert batch['attention_mask_b'][:, 8:].sum(1).tolist() == [1, 5]
  # Pixel mode needs images: a features-only line is refused, naming the line.
  np.savez(tmp_path / 'f.npz', features=np.zeros((1, 6), np.float32),
           boxes=np.zeros((1, 4), np.float32))
  (tmp_path / 'bad.jsonl').write_text(json.dumps({'features': 'f.npz', 'text': 'x'}) + '\n')
  with pytest.raises(custom.TaskDataError, match=r'bad.jsonl:1: pixel mode'):
    custom.build_custom_dataset(task='retrieval', splits={'train': str(tmp_path / 'bad.jsonl')},
                                out_dir=str(tmp_path / 'ds2'), pixels=True, vocab_size=100)


def test_one_shape_vqa_set_read_by_the_custom_path(tmp_path):
  folder = str(tmp_path / 'raw')
  train = one_shape_vqa.write_split(folder, 'train', 6, seed=1)
  val = one_shape_vqa.write_split(folder, 'val', 2, seed=1)
  lines = [json.loads(l) for l in open(train, encoding='utf-8')]
  assert len(lines) == 18 and {l['question'] for l in lines[:2]} == {
      'what colour is the shape?', 'what shape is it?'}
  assert {l['answer'] for l in lines[2::3]} <= {'yes', 'no'}
  out = str(tmp_path / 'ds')
  assert custom.main(['--task=vqa', f'--train={train}', f'--val={val}', f'--out_dir={out}',
                      '--pixels', '--vocab_size=200']) == 0
  config = _data_config(kind='records', max_seq_length=10, max_phrases=2, max_tag_length=4,
                        max_img_seq_length=17)
  info = data.task_info(out)
  batch = next(_iterator(config, out, 'train', task='vqa', batch=18,
                         batch_keys=('answer_targets', 'question_id')))
  for row in range(0, 18, 3):  # the colour question of each image
    answer = info.answers[int(np.argmax(batch['answer_targets'][row]))]
    image, box, _ = one_shape_vqa.generate_example(1, 'train', row // 3)
    assert answer == lines[row]['answer']
    inside = (batch['pixels'][row] + 1) * 127.5
    x = int((box[0] + box[2]) / 2)
    y = int((box[1] + box[3]) / 2)
    want = np.asarray(scenes.COLOURS[answer], np.float32)
    assert np.abs(inside[y, x] - want).max() <= scenes.COLOUR_JITTER + 1
    np.testing.assert_array_equal(image[y, x], np.round(inside[y, x]))
  # The hand-made-extractor path reads the same files.
  assert custom.main(['--task=vqa', f'--train={train}', f'--out_dir={tmp_path / "feats"}',
                      '--feature_dim=20', '--vocab_size=200']) == 0
  assert storage.RecordSource(str(tmp_path / 'feats'), 'train').feature_dim == 20
  assert os.path.exists(os.path.join(folder, 'train', '000005.png'))


def test_custom_pixels_from_image_records(shapesworld, tmp_path):
  directory, world = shapesworld
  lines = tmp_path / 'train.jsonl'
  lines.write_text(json.dumps({'image_id': generate.image_id('val', 1), 'text': 'a shape'}) + '\n')
  out = str(tmp_path / 'ds')
  custom.build_custom_dataset(task='retrieval', splits={'train': str(lines)}, out_dir=out,
                              image_records=directory, image_records_split='val', pixels=True,
                              vocab_size=100)
  record = next(iter(storage.read_dataset(out, 'train')))
  want = generate.generate_record(world, 'val', 1)
  assert record['image_png'].numpy() == want['image_png']
  np.testing.assert_allclose(record['region_features'].numpy(),
                             want['region_features'][:, -features.NUM_BOX_DIMS:], atol=1e-6)


def test_one_shape_vqa_benchmark_trains_both_paths_alike(tmp_path):
  """benchmarks/one_shape_vqa.py: the two paths differ only by the tower; dropout 0 by default."""
  from benchmarks import one_shape_vqa as bench  # pylint: disable=g-import-not-at-top
  features_config, pixels_config = (bench.task_config(str(tmp_path), 40, 4, pixels, lr=5e-4)
                                    for pixels in (False, True))
  for config in (features_config, pixels_config):
    assert (config.model.dropout_rate, config.model.attention_dropout_rate) == (0.0, 0.0)
    assert (config.total_steps, config.optimizer.lr, config.init_from) == (40, 5e-4, '')
    assert config.data.max_img_seq_length == 17 and sorted(config.evals) == ['train', 'val']
  assert 'vision' not in features_config.model and pixels_config.model.vision.tower == 'vit'
  kept = bench.task_config(str(tmp_path), 40, 4, True, dropout=None)
  assert kept.model.dropout_rate == kept.model.attention_dropout_rate == 0.1
  assert pixels_config.model.vision.stem == 'patch'
  assert bench.task_config(str(tmp_path), 40, 4, True, stem='conv').model.vision.stem == 'conv'
  assert not pixels_config.model.vision.freeze
  assert bench.task_config(str(tmp_path), 40, 4, True, freeze_tower=True).model.vision.freeze
  # One box per line; crops and bins reach the tower and size its region rows.
  cropped = bench.task_config(str(tmp_path), 40, 4, True, boxes=True, crops=True, bins=2)
  assert cropped.data.max_img_seq_length == 1 and cropped.model.vision.crops
  assert cropped.model.region_feature_dim == 2 * 2 * 64 + 6 and cropped.model.vision.bins == 2
  assert pixels_config.model.region_feature_dim == 64 + 6 and not pixels_config.model.vision.crops
  # Fine-tuned from pre-training runs: each path from its own run, the answer head from the MLM
  # head's transform, dropout as the flag says.
  runs = bench.parse_init_from(['features=/runs/f', 'pixels=/runs/p'])
  assert runs == {'features': '/runs/f', 'pixels': '/runs/p'}
  tuned = bench.task_config(str(tmp_path), 40, 4, True, init_from=runs['pixels'])
  assert tuned.init_from == '/runs/p' and tuned.vqa_init_from_mlm
  assert tuned.model.dropout_rate == 0.0 and tuned.model.vision.tower == 'vit'
  for bad in (['pixels=/runs/p'], ['tower=/runs/t'], ['features']):
    with pytest.raises(app.UsageError):
      bench.parse_init_from(bad)


def test_one_shape_kind_probe_reads_what_the_features_carry():
  """benchmarks/one_shape_kind_probe.py: the linear probe finds a label the features carry and
  no more than chance in features that do not; its images carry the generator's labels."""
  from benchmarks import one_shape_kind_probe as probe  # pylint: disable=g-import-not-at-top
  pixels, labels, boxes = probe.images('val', 6, 'kind')
  assert pixels.shape == (6, 64, 64, 3) and -1 <= pixels.min() and pixels.max() <= 1
  for index in range(6):
    _, box, questions = one_shape_vqa.generate_example(0, 'val', index)
    assert scenes.KINDS[labels[index]] == questions[1][1]
    np.testing.assert_allclose(boxes[index] * 64, box, rtol=1e-6)
  rng = np.random.default_rng(0)
  y_train, y_val = rng.integers(0, 7, 400), rng.integers(0, 7, 200)
  offset = rng.normal(size=(1, 7)) * 5  # the same for both splits: the probe standardises
  carried = lambda y: np.eye(7)[y] * 4 + rng.normal(size=(len(y), 7)) * 0.5 + offset
  accuracy = probe.linear_probe(carried(y_train), y_train, carried(y_val), y_val, 7)
  assert min(accuracy) > 0.95, accuracy
  noise = lambda y: rng.normal(size=(len(y), 7))
  assert probe.linear_probe(noise(y_train), y_train, noise(y_val), y_val, 7)[1] < 0.3
