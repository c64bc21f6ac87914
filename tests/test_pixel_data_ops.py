"""Pixel-mode image ops (input_pipeline/image_ops.py, ops.py): values, boxes, words, seeds, errors."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from input_pipeline import image_ops
from input_pipeline import ops
from input_pipeline import storage

BOX_RGB = (255, 0, 0)


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _context(seed=0, num_answers=0):
  return ops.Context(tokenizer=None, concept_vocab=None, lengths=None, seed=seed,
                     num_answers=num_answers)


def _example(image, boxes, *, text='a red square left of a circle', phrases=(('square',),),
             links=(0,), epoch=0, index=0, image_id='img-7', data=None):
  words = [list(p) for p in phrases]
  return {
      'image_id': tf.constant(image_id), 'image_png': tf.constant(_png(image) if data is None else data),
      'image_size': tf.constant(image.shape[:2], tf.int32),
      'boxes': tf.constant(boxes, tf.float32), 'text': tf.constant(text),
      'phrases': tf.ragged.constant(words, dtype=tf.string, ragged_rank=1) if words else
                 tf.RaggedTensor.from_row_lengths(tf.constant([], tf.string),
                                                  tf.constant([], tf.int64)),
      'phrase_regions': tf.constant(links, tf.int32),
      'epoch': tf.constant(epoch, tf.int64), 'example_index': tf.constant(index, tf.int64)}


def _run(spec, example, **context):
  return ops.build(spec, _context(**context))(example)


def _scene(height=60, width=80):
  """A noisy grey image with one red rectangle; its pixel box (x1, y1, x2, y2)."""
  rng = np.random.default_rng(0)
  image = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
  image[:, :, 0] = np.minimum(image[:, :, 0], 150)
  box = (44, 10, 64, 30)
  image[box[1]:box[3], box[0]:box[2]] = BOX_RGB
  return image, box


def test_decode_resize_normalise_match_pil_and_numpy():
  image = np.random.default_rng(1).integers(0, 256, (48, 72, 3), dtype=np.uint8)
  np.testing.assert_array_equal(image_ops.decode(tf.constant(_png(image)), 'x').numpy(), image)
  jpeg = _jpeg(image)
  np.testing.assert_array_equal(image_ops.decode(tf.constant(jpeg), 'x').numpy(),
                                np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')))
  gray = _png(image[:, :, 0])
  np.testing.assert_array_equal(image_ops.decode(tf.constant(gray), 'x').numpy(),
                                np.repeat(image[:, :, :1], 3, axis=2))
  # Downsampling: PIL's antialiased bicubic up to its uint8 rounding.
  ours = image_ops.resize(image, 32).numpy()
  pil = np.asarray(Image.fromarray(image).resize((32, 32), Image.BICUBIC), np.float32)
  assert np.abs(ours - pil).max() < 1.5 and np.abs(ours - pil).mean() < 0.5
  np.testing.assert_array_equal(image_ops.resize(image[:32, :32], 32).numpy(), image[:32, :32])
  out = _run("decode_image|resize(32)|normalise('minus_one_to_one')",
             _example(image, [[0, 0, 72, 48]]))
  np.testing.assert_allclose(out['pixels'].numpy(), ours / 127.5 - 1.0, atol=1e-6)
  mean, std = image_ops.NORMS['imagenet']
  out = _run("decode_image|resize(32)|normalise('imagenet')", _example(image, [[0, 0, 72, 48]]))
  np.testing.assert_allclose(out['pixels'].numpy(), (ours - np.float32(mean)) / np.float32(std),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['region_boxes'].numpy(), [[0, 0, 1, 1]])
  with pytest.raises(ValueError, match='unknown image_norm'):
    ops.build("decode_image|resize(32)|normalise('vgg')", _context())


def _red_box(pixels: np.ndarray) -> np.ndarray:
  """Normalised (x1, y1, x2, y2) of the clearly red pixels of a [-1, 1] image."""
  image = (pixels + 1.0) * 127.5
  red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
  rows, cols = np.flatnonzero(red.any(1)), np.flatnonzero(red.any(0))
  size = pixels.shape[0]
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]) / size


@pytest.mark.parametrize('flip', [0.0, 1.0])
def test_crop_and_flip_move_the_boxes_with_the_pixels(flip):
  image, box = _scene()
  boxes = [box, [0, 0, 80, 60], [0, 40, 20, 60]]
  spec = (f'decode_image|random_crop(scale=(0.3, 0.6))|flip_lr({flip})|resize(64)|'
          "normalise('minus_one_to_one')")
  for index in range(6):
    out = _run(spec, _example(image, boxes, index=index), seed=3)
    region = out['region_boxes'].numpy()
    np.testing.assert_allclose(_red_box(out['pixels'].numpy()), region[0], atol=2.5 / 64)
    assert np.all((region >= 0) & (region <= 1))
    assert np.all(region[:, 2:] - region[:, :2] >= 1 / 64 - 1e-6)
    # The grounded box (phrase -> region 0) is never cut: the crop covers it.
    red_pixels = ((out['pixels'].numpy()[..., 0] > 0.6) & (out['pixels'].numpy()[..., 1] < -0.6))
    assert red_pixels.sum() > 0.8 * (region[0, 2] - region[0, 0]) * (
        region[0, 3] - region[0, 1]) * 64 * 64
    flipped = flip == 1.0
    assert out['text'].numpy().decode() == ('a red square right of a circle' if flipped else
                                            'a red square left of a circle')


def test_flip_swaps_left_and_right_in_text_and_phrases():
  image, box = _scene()
  example = _example(image, [box], text='The circle is LEFT of the square, right?',
                     phrases=(('circle', 'left of', 'square'), ('leftover',)), links=(-1, -1))
  out = _run('decode_image|flip_lr(1.0)', example)
  assert out['text'].numpy().decode() == 'The circle is right of the square, left?'
  assert out['phrases'].to_list() == [[b'circle', b'right of', b'square'], [b'leftover']]
  kept = _run('decode_image|flip_lr(0.0)', example)
  assert kept['text'].numpy().decode() == 'The circle is LEFT of the square, right?'
  with pytest.raises(ValueError, match='VQA'):
    ops.build('decode_image|flip_lr(0.5)', _context(num_answers=3))


def test_augmentation_is_a_function_of_seed_epoch_and_example():
  image, box = _scene()
  spec = "decode_image|random_crop|flip_lr(0.5)|resize(32)|normalise('minus_one_to_one')"

  def draw(seed, epoch, index):
    out = _run(spec, _example(image, [box, [0, 0, 80, 60]], epoch=epoch, index=index,
                              links=(-1,)), seed=seed)
    return out['pixels'].numpy(), out['region_boxes'].numpy()

  first, again = draw(0, 1, 5), draw(0, 1, 5)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  for other in (draw(0, 2, 5), draw(0, 1, 6), draw(1, 1, 5)):
    assert not np.array_equal(first[1], other[1])
  # Over epochs an example sees many crops, and both flips (the box's centre on both sides).
  seen = [draw(0, e, 5)[1][0] for e in range(12)]
  assert len({tuple(np.round(b, 4)) for b in seen}) > 6
  centres = np.array([(b[0] + b[2]) / 2 for b in seen])
  assert (centres < 0.5).any() and (centres > 0.5).any()


def test_bad_image_bytes_name_the_record():
  image, box = _scene()
  for data in (b'', b'GIF89a not an image we store'):
    with pytest.raises(tf.errors.InvalidArgumentError, match='img-7'):
      _run('decode_image', _example(image, [box], data=data))
  with pytest.raises(tf.errors.InvalidArgumentError, match='rec-b'):
    _run('decode_image', _example(image, [box], image_id='rec-b', data=b'\xff\xd9'))
  # Truncated bytes with a valid header are caught when a pixel dataset is built.
  whole = _png(image)
  assert storage.image_bytes_problem(whole) is None
  assert storage.image_bytes_problem(_jpeg(image)) is None
  assert 'Truncated' in storage.image_bytes_problem(whole[:len(whole) // 2])
  assert storage.image_bytes_problem(_jpeg(image)[:300]) is not None


def test_pixel_preprocess_composes_the_op_string():
  spec = ops.pixel_preprocess(ops.PRESETS['clean'], image_size=64, image_norm='clip',
                              augment=ops.PIXEL_AUGMENT['pretrain'])
  assert spec == ("decode_image|random_crop(scale=(0.5, 1.0))|flip_lr(0.5)|resize(64)|"
                  "normalise('clip')|unique_tags|assemble|no_corrupt")
  assert [name for name, _, _ in ops.parse(spec)][:5] == [
      'decode_image', 'random_crop', 'flip_lr', 'resize', 'normalise']
  assert "resize(32, method='bilinear')|" in ops.pixel_preprocess(
      'assemble|no_corrupt', image_size=32, resize_method='bilinear')
