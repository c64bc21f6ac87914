"""Image records of a custom task dataset (tasks/custom.py): one per image its JSON lines name.

An "image" line becomes a record holding the image as PNG and its regions: the given "boxes" or
`region_features.grid_boxes(h, w, grid)` (the grid cells and the whole image). Features mode runs
the hand-made extractor (`region_features.extract_region_features`) on them; pixel mode
(`pixels=True`, for the vision tower in the model) stores only the 6 box numbers of each region
(features.py), the tower computing the rest from the pixels in the training graph. A "features"
line reads a precomputed .npz (features mode only); an "image_id" line takes the record of an
image-record dataset (pixel mode: it must hold its image).

`standardize` rescales the hand-made extractor's appearance dims (all but the last 6, the box)
to zero mean and unit variance per dim over the training split's regions, the same affine map
on every split. The raw rows are dominated by what every image shares (a plain background fills
most grid cells identically), so a model trained from random weights on them answers from the
question alone; standardised, the few dims where images differ carry the signal.
"""

import io
from typing import Any, Mapping

import numpy as np
from PIL import Image

from input_pipeline import features
from input_pipeline import region_features
from input_pipeline import storage
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing

TaskDataError = examples_lib.TaskDataError


def image_records(lines, feature_dim: int, grid: int, image_records, image_records_split,
                  pixels: bool = False) -> dict[str, dict]:
  """{image_id: image record} of the images the lines name, in order of first mention."""
  specs = {}
  for line in lines:
    image_id, spec = line['example']['image_id'], line['image']
    if image_id in specs:
      first = {k: v for k, v in specs[image_id].items() if k != 'where'}
      if first != {k: v for k, v in spec.items() if k != 'where'}:
        raise TaskDataError(f'{spec["where"]}: image {image_id!r} was described differently at '
                            f'{specs[image_id]["where"]}.')
      continue
    specs[image_id] = spec
  external = [i for i, s in specs.items() if 'image' not in s and 'features' not in s]
  found = {}
  if external:
    if image_records is None:
      raise TaskDataError(f'{specs[external[0]]["where"]}: "image_id" {external[0]!r} without '
                          '"image" or "features" needs --image_records.')
    found = importing.load_image_records([(image_records, image_records_split)], external,
                                            normalize_ids=False)
  records = {}
  for image_id, spec in specs.items():
    if image_id in external:
      if image_id not in found:
        raise TaskDataError(f'{spec["where"]}: image {image_id!r} is not in '
                            f'{image_records}/{image_records_split}.')
      records[image_id] = (_pixel_record(found[image_id], spec['where']) if pixels
                           else found[image_id])
    else:
      records[image_id] = _record(image_id, spec, feature_dim, grid, pixels)
  return records


def _record(image_id: str, spec: Mapping[str, Any], feature_dim: int, grid: int,
            pixels: bool) -> dict:
  where = spec['where']
  image, png = None, b''
  if 'image' in spec:
    try:
      with Image.open(spec['image']) as img:
        image = np.asarray(img.convert('RGB'), np.uint8)
    except OSError as e:
      raise TaskDataError(f'{where}: cannot read image {spec["image"]} ({e}).') from None
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG')
    png = buffer.getvalue()
  if pixels:
    if image is None:
      raise TaskDataError(f'{where}: pixel mode stores images for the vision tower: give '
                          '"image" (and "boxes"), not only "features".')
    height, width = image.shape[:2]
    boxes = (np.asarray(spec['boxes'], np.float32).reshape(-1, 4) if 'boxes' in spec
             else region_features.grid_boxes(height, width, grid))
    try:
      region_features.check_boxes(boxes, height, width)
    except ValueError as e:
      raise TaskDataError(f'{where}: {e}') from None
    feats, tags, size = region_features.box_features(boxes, height, width), None, (height, width)
  elif 'features' in spec:
    feats, boxes, tags, size = _load_npz(spec['features'], where)
    if size is None and image is not None:
      size = image.shape[:2]
    if feats.shape[1] == feature_dim - 6:
      if size is None:
        raise TaskDataError(f'{where}: {spec["features"]} has no box dims and no image_size.')
      feats = np.concatenate([feats, region_features.box_features(boxes, *size)], axis=1)
    elif feats.shape[1] != feature_dim:
      raise TaskDataError(f'{where}: {spec["features"]} features are {feats.shape[1]} wide; '
                          f'expected feature_dim {feature_dim} or {feature_dim - 6}.')
    size = size if size is not None else (1, 1)
  else:
    height, width = image.shape[:2]
    boxes = (np.asarray(spec['boxes'], np.float32) if 'boxes' in spec
             else region_features.grid_boxes(height, width, grid))
    try:
      feats = region_features.extract_region_features(image, boxes, feature_dim)
    except ValueError as e:
      raise TaskDataError(f'{where}: {e}') from None
    tags, size = None, (height, width)
  tags = spec.get('tags', tags)
  if tags is None:
    tags = [''] * len(boxes)  # No detector classes: an empty tag list in the batch.
  if len(tags) != len(boxes) or not all(isinstance(t, str) for t in tags):
    raise TaskDataError(f'{where}: "tags" must hold one string per region ({len(boxes)}).')
  return {'image_id': image_id, 'image_png': png, 'image_size': np.asarray(size, np.int32),
          'region_features': np.asarray(feats, np.float32),
          'boxes': np.asarray(boxes, np.float32).reshape(-1, 4), 'tags': list(tags),
          'captions': [], 'phrases': [], 'phrase_regions': []}


# A dim whose training std is below this is constant there: it is centred, not scaled.
MIN_FEATURE_STD = 1e-3


def standardize(records: Mapping[str, Mapping[str, dict]], train_split: str = 'train') -> dict:
  """Standardises the appearance dims of every record in place with the statistics of
  `train_split`'s regions; returns {'mean': [D - 6], 'std': [D - 6]} (the map x -> (x - mean) /
  std applied, std 1 where the training split has no spread)."""
  train = [r['region_features'] for r in records[train_split].values()]
  if not train or not sum(len(f) for f in train):
    raise TaskDataError(f'standardize: split {train_split!r} has no regions to take '
                        'statistics from.')
  dims = train[0].shape[1] - features.NUM_BOX_DIMS
  stacked = np.concatenate(train).astype(np.float64)[:, :dims]
  mean, std = stacked.mean(0), stacked.std(0)
  std = np.where(std < MIN_FEATURE_STD, 1.0, std)
  for split_records in records.values():
    for record in split_records.values():
      feats = np.array(record['region_features'], np.float32)
      feats[:, :dims] = (feats[:, :dims] - mean) / std
      record['region_features'] = feats
  return {'mean': mean.tolist(), 'std': std.tolist()}


def _pixel_record(record: dict, where: str) -> dict:
  """An image record from --image_records for pixel mode: its image checked, its region features
  reduced to the 6 box numbers (the tower computes the rest)."""
  problem = (storage.image_bytes_problem(record['image_png']) if record['image_png']
             else 'no image bytes: the records hold features only')
  if problem:
    raise TaskDataError(f'{where}: pixel mode needs the image of record '
                        f'{record["image_id"]!r}: {problem}.')
  height, width = (int(v) for v in record['image_size'])
  return {**record, 'region_features': region_features.box_features(record['boxes'], height,
                                                                    width)}


def _load_npz(path: str, where: str) -> tuple:
  try:
    with np.load(path) as data:
      feats = np.asarray(data['features'], np.float32)
      boxes = np.asarray(data['boxes'], np.float32)
      tags = [str(t) for t in data['tags']] if 'tags' in data else None
      size = tuple(int(v) for v in data['image_size']) if 'image_size' in data else None
  except (OSError, KeyError, ValueError) as e:
    raise TaskDataError(f'{where}: {path} needs arrays "features" [N, D] and "boxes" [N, 4] '
                        f'({e}).') from None
  if feats.ndim != 2 or boxes.shape != (feats.shape[0], 4):
    raise TaskDataError(f'{where}: {path}: features {feats.shape} and boxes {boxes.shape} do '
                        'not describe the same N regions.')
  return feats, boxes, tags, size
