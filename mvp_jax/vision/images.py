"""Decoding image files for the vision tower, with a clear error for each file that cannot be.

Converted: grayscale (L, LA, 1, I;16, I, F), palette, CMYK, RGBA (alpha dropped) -> RGB, and the
EXIF orientation applied (`ImageOps.exif_transpose`), so boxes and sizes refer to the image as it
is meant to be seen. Refused with ImageError(kind): unreadable (not an image / unknown format),
truncated (data ends early), huge (more than max_pixels), empty (a zero side).
The tower sees the image resized to (size, size) with bicubic resampling, as
`transformers.SiglipImageProcessor`; JPEGs much larger than that are decoded at a reduced scale
first (`Image.draft`), which only changes the resampling input, never the reported size.
"""

import dataclasses
import io
import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps

ERROR_KINDS = ('unreadable', 'truncated', 'huge', 'empty')
DEFAULT_MAX_PIXELS = 100_000_000
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose the image


class ImageError(ValueError):
  """An image file that cannot be used; `kind` is one of ERROR_KINDS, `path` names the file."""

  def __init__(self, path: str, kind: str, detail: str):
    super().__init__(f'{path}: {kind} image ({detail})')
    self.path, self.kind, self.detail = path, kind, detail


@dataclasses.dataclass
class DecodedImage:
  """pixels: uint8 [size, size, 3]; height, width: of the oriented original image."""
  pixels: np.ndarray
  height: int
  width: int
  converted_from: str  # the file's mode when it was not RGB, else ''


def _to_rgb(image: Image.Image) -> Image.Image:
  if image.mode == 'RGB':
    return image
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    values = np.asarray(image, np.float64)
    top = values.max() if values.size else 0.0
    values = values * (255.0 / top) if top > 0 else values
    image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), 'L')
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    image = image.convert('RGBA').convert('RGB')
  return image.convert('RGB')


def decode(data: bytes, path: str, size: int,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
  """Decodes, orients, converts and resizes one image (see the module docstring)."""
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      width, height = image.size
      if width * height > max_pixels:
        raise ImageError(path, 'huge', f'{width}x{height} pixels, more than max_pixels='
                         f'{max_pixels}')
      if width < 1 or height < 1:
        raise ImageError(path, 'empty', f'size {width}x{height}')
      orientation = image.getexif().get(0x0112, 1)
      if orientation in _SWAPPED_ORIENTATIONS:
        width, height = height, width
      mode = image.mode
      if image.format == 'JPEG':
        image.draft('RGB', (2 * size, 2 * size))
      image.load()
      image = ImageOps.exif_transpose(image)
      image = _to_rgb(image).resize((size, size), Image.BICUBIC)
  except ImageError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(path, 'huge', str(e)) from None
  except OSError as e:
    message = str(e)
    kind = 'truncated' if 'truncated' in message or 'broken data' in message else 'unreadable'
    if isinstance(e, Image.UnidentifiedImageError):
      kind = 'unreadable'
    raise ImageError(path, kind, message) from None
  except (ValueError, SyntaxError, EOFError) as e:
    raise ImageError(path, 'unreadable', f'{type(e).__name__}: {e}') from None
  return DecodedImage(np.asarray(image, np.uint8), height, width,
                      '' if mode == 'RGB' else mode)


def read(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
  """`decode` of a file; a missing or unreadable file is an ImageError('unreadable')."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise ImageError(os.fspath(path), 'unreadable', str(e)) from None
  return decode(data, os.fspath(path), size, max_pixels)
