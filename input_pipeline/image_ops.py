"""In-graph image work of pixel mode: decode, crop, flip, resize, normalise, boxes alongside.

Pure TensorFlow functions on one unbatched example; ops.py registers them as the pixel ops
(`decode_image`, `random_crop`, `flip_lr`, `resize`, `normalise`). Images are [h, w, 3] (uint8
after decoding, float32 in [0, 255] after `resize`); boxes are normalised (x0, y0, x1, y1) in
[0, 1] of the current image, float32 [N, 4]. Every random draw is stateless from an int64 [2]
seed (ops.example_seed: (seed, stream, epoch, example_index)), so a resumed run sees the same
crops and flips.

Crop (Inception-style random resized crop, then `resize` resamples it): an area fraction
s ~ U(scale) and a pixel aspect ratio r ~ logU(ratio) give a window of s of the image, placed
uniformly; it is then widened to contain `cover`, the union of the boxes the text is grounded to
(and a referring expression's target box), so an object the caption names is never cut away.
The window is rounded outwards to whole pixels and the boxes are mapped with that exact window,
clipped to it and kept at least `min_size` wide and high (a region cropped away keeps its slot,
its tags and its links, as a thin box on the window's edge).
"""

import math

import tensorflow as tf

# (mean, std) per channel on the [0, 255] scale: pixels = (image - mean) / std.
NORMS = {
    'minus_one_to_one': ((127.5,) * 3, (127.5,) * 3),  # SigLIP / big_vision value_range(-1, 1)
    'zero_to_one': ((0.0,) * 3, (255.0,) * 3),
    'imagenet': ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255,
                                                           0.225 * 255)),
    'clip': ((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
             (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)),
}
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_JPEG_MAGIC = b'\xff\xd8\xff'
DEFAULT_SWAPS = (('left', 'right'),)


def decode(data: tf.Tensor, image_id: tf.Tensor) -> tf.Tensor:
  """PNG or JPEG bytes string [] -> uint8 [h, w, 3].

  Bytes that are neither (b'' of a features-only record, anything else) fail with an error naming
  `image_id`; grayscale and RGBA images become RGB.
  """
  is_png = tf.equal(tf.strings.substr(data, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
  is_jpeg = tf.equal(tf.strings.substr(data, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
  check = tf.debugging.Assert(
      is_png | is_jpeg,
      ['pixel mode: the image record', image_id, 'holds no PNG or JPEG image (image_png has',
       tf.strings.length(data), 'bytes starting', tf.strings.substr(data, 0, 8),
       '); pixel mode needs records written with their images.'], summarize=8)
  with tf.control_dependencies([check]):
    data = tf.identity(data)
  # JPEG with libjpeg's accurate integer DCT, as PIL (and so the offline extractor) decodes it.
  image = tf.cond(is_jpeg,
                  lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                  lambda: tf.io.decode_png(data, channels=3))
  return tf.ensure_shape(image, [None, None, 3])


def normalised_boxes(boxes: tf.Tensor, image_size: tf.Tensor) -> tf.Tensor:
  """Pixel boxes float32 [N, 4] of an image of `image_size` int [2] = (h, w) -> [0, 1] boxes."""
  size = tf.cast(image_size, tf.float32)
  scale = tf.stack([size[1], size[0], size[1], size[0]])
  return tf.clip_by_value(tf.cast(boxes, tf.float32) / scale, 0.0, 1.0)


def union_box(boxes: tf.Tensor) -> tf.Tensor:
  """float32 [4]: the smallest box holding all of boxes [K, 4]; (1, 1, 0, 0) when K = 0."""
  return tf.concat([tf.reduce_min(tf.concat([boxes[:, :2], [[1.0, 1.0]]], 0), 0),
                    tf.reduce_max(tf.concat([boxes[:, 2:], [[0.0, 0.0]]], 0), 0)], 0)


def sample_window(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                  scale: tuple[float, float], ratio: tuple[float, float],
                  cover: tf.Tensor) -> tf.Tensor:
  """int32 [4] pixel window (x0, y0, x1, y1) of an h x w image (see the module docstring)."""
  u = tf.random.stateless_uniform([4], seed)
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = scale[0] + (scale[1] - scale[0]) * u[0]
  log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
  r = tf.exp(log_r)
  win_w = tf.minimum(tf.sqrt(area * r * h / w), 1.0)  # normalised: pixel aspect r, area s
  win_h = tf.minimum(tf.sqrt(area / r * w / h), 1.0)
  x0, y0 = (1.0 - win_w) * u[2], (1.0 - win_h) * u[3]
  window = tf.stack([x0, y0, x0 + win_w, y0 + win_h])
  window = tf.concat([tf.minimum(window[:2], cover[:2]), tf.maximum(window[2:], cover[2:])], 0)
  scale_px = tf.stack([w, h, w, h])
  lo = tf.floor(window[:2] * scale_px[:2])
  hi = tf.maximum(tf.math.ceil(window[2:] * scale_px[2:]), lo + 1.0)
  hi = tf.minimum(hi, scale_px[2:])
  lo = tf.minimum(lo, hi - 1.0)
  return tf.cast(tf.concat([lo, hi], 0), tf.int32)


def crop(image: tf.Tensor, boxes: tf.Tensor, window: tf.Tensor,
         min_size: float) -> tuple[tf.Tensor, tf.Tensor]:
  """The window int32 [4] (x0, y0, x1, y1) of image [h, w, 3], and boxes [N, 4] mapped into it."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  out = image[window[1]:window[3], window[0]:window[2]]
  size = tf.cast(tf.stack([width, height, width, height]), tf.float32)
  win = tf.cast(window, tf.float32) / size
  extent = tf.tile(win[2:] - win[:2], [2])
  mapped = (boxes - tf.tile(win[:2], [2])) / extent
  return out, clip_boxes(mapped, min_size)


def clip_boxes(boxes: tf.Tensor, min_size: float) -> tf.Tensor:
  """Boxes [N, 4] clipped to [0, 1], each side at least `min_size` (moved inside when needed)."""
  lo = tf.clip_by_value(boxes[:, :2], 0.0, 1.0 - min_size)
  hi = tf.clip_by_value(boxes[:, 2:], 0.0, 1.0)
  hi = tf.maximum(hi, lo + min_size)
  return tf.concat([lo, hi], 1)


def flip(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Mirror image [h, w, 3] left-right and its boxes [N, 4]."""
  return (tf.reverse(image, [1]),
          tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], 1))


def swap_words(text: tf.Tensor, swaps=DEFAULT_SWAPS) -> tf.Tensor:
  """Swaps each pair of whole words (any case; written lower-case) in a string tensor."""
  for a, b in swaps:
    held = '\x01'
    text = tf.strings.regex_replace(text, rf'(?i)\b{a}\b', held)
    text = tf.strings.regex_replace(text, rf'(?i)\b{b}\b', a)
    text = tf.strings.regex_replace(text, held, b)
  return text


def resize(image: tf.Tensor, size: int, method: str = 'bicubic') -> tf.Tensor:
  """image [h, w, 3] -> float32 [size, size, 3] on the [0, 255] scale (antialiased, clipped: the
  resampling of PIL's `Image.resize`, which the offline extractor uses)."""
  out = tf.image.resize(tf.cast(image, tf.float32), [size, size], method=method, antialias=True)
  return tf.ensure_shape(tf.clip_by_value(out, 0.0, 255.0), [size, size, 3])


def normalise(image: tf.Tensor, norm) -> tf.Tensor:
  """float32 [H, W, 3] on [0, 255] -> (image - mean) / std; `norm` a NORMS name or (mean, std)."""
  if isinstance(norm, str):
    if norm not in NORMS:
      raise ValueError(f'unknown image_norm {norm!r}; known: {sorted(NORMS)} or (mean, std) '
                       'on the [0, 255] scale.')
    norm = NORMS[norm]
  mean, std = (tf.constant(v, tf.float32) for v in norm)
  return (tf.cast(image, tf.float32) - mean) / std
