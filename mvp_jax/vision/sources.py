"""Lists of images to extract: a folder, a COCO-style JSON, or a plain list file.

Each source gives ImageItems in a fixed order (the extraction's chunks depend on it):
  folder      every image file below DIR (by extension), sorted by relative path; the image id is
              the relative path without extension.
  coco_json   {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"} or
              {"image_id", "bbox": [x, y, w, h]}]} in file order; id = str(id), files under
              image_root (default: the JSON's folder); captions and boxes come along.
  image_list  one image a line, `path` or `path<TAB>image_id` (default id: the file name without
              extension); relative paths are relative to the list's folder.
Duplicate image ids are errors naming both entries.
"""

import dataclasses
import json
import os
from typing import Optional

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')


class SourceError(ValueError):
  """A malformed image list; names the file and entry."""


@dataclasses.dataclass
class ImageItem:
  image_id: str
  path: str
  captions: Optional[list] = None  # from a COCO captions file
  boxes: Optional[list] = None      # pixel [x1, y1, x2, y2] from COCO bbox annotations


def _unique(items: list, where: str) -> list:
  seen = {}
  for item in items:
    if item.image_id in seen:
      raise SourceError(f'{where}: image id {item.image_id!r} of {item.path} repeats the one of '
                        f'{seen[item.image_id]}.')
    seen[item.image_id] = item.path
  if not items:
    raise SourceError(f'{where}: no images.')
  return items


def from_folder(folder: str) -> list:
  items = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, folder)
        items.append(ImageItem(os.path.splitext(rel)[0].replace(os.sep, '/'), path))
  items.sort(key=lambda item: os.path.relpath(item.path, folder))
  return _unique(items, folder)


def from_coco_json(path: str, image_root: Optional[str] = None) -> list:
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise SourceError(f'{path}: not valid JSON ({e}).') from None
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise SourceError(f'{path}: expected an object with an "images" list.')
  root = image_root or os.path.dirname(os.path.abspath(path))
  items, by_id = [], {}
  for i, image in enumerate(data['images']):
    if not isinstance(image, dict) or 'id' not in image or not isinstance(
        image.get('file_name'), str):
      raise SourceError(f'{path}: images[{i}] needs "id" and "file_name".')
    item = ImageItem(str(image['id']), os.path.join(root, image['file_name']))
    items.append(item)
    by_id.setdefault(item.image_id, item)
  for i, ann in enumerate(data.get('annotations') or []):
    item = by_id.get(str(ann.get('image_id'))) if isinstance(ann, dict) else None
    if item is None:
      raise SourceError(f'{path}: annotations[{i}] refers to no listed image.')
    if isinstance(ann.get('caption'), str) and ann['caption'].strip():
      item.captions = (item.captions or []) + [ann['caption'].strip()]
    if 'bbox' in ann:
      box = ann['bbox']
      if not (isinstance(box, list) and len(box) == 4):
        raise SourceError(f'{path}: annotations[{i}] bbox must be [x, y, w, h].')
      x, y, w, h = (float(v) for v in box)
      item.boxes = (item.boxes or []) + [[x, y, x + w, y + h]]
  return _unique(items, path)


def from_image_list(path: str) -> list:
  root = os.path.dirname(os.path.abspath(path))
  items = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      fields = line.split('\t')
      if len(fields) > 2 or not fields[0].strip():
        raise SourceError(f'{path}:{line_no}: expected "path" or "path<TAB>image_id".')
      file_path = os.path.join(root, fields[0].strip())
      image_id = fields[1].strip() if len(fields) == 2 else os.path.splitext(
          os.path.basename(file_path))[0]
      items.append(ImageItem(image_id, file_path))
  return _unique(items, path)
