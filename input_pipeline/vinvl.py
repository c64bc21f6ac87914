"""Turns VinVL region features, detections and captions into image records (features.py).

Inputs (spec §5.1):
  features.tsv     `image_id \\t num_boxes \\t base64(float32 [num_boxes * D])`, D = 2054 (the
                   2048-d RoI feature then the normalised box) or 2048 (the box is appended here).
  predictions.tsv  `image_id \\t json{"objects": [{"class", "conf", "rect": [x1, y1, x2, y2]}],
                   "image_h", "image_w"}`, optionally with "gt_objects" (predictions_gt.tsv).
  *.lineidx        byte offset of every line (oscar/utils/tsv_file.py). With `imageid2idx.json`
                   beside features.tsv (image id -> row) the features are read by seeking.
  extract variant  one file of `name \\t json{"feature": base64(float32 [N, 2054]),
                   "predictions": [class, ...]}` (tools/img_feat_extract.py). It stores no image
                   size, so its records have image_size (1, 1) and boxes in unit coordinates.

Captions ({image id: [caption]}) and phrases are read by input_pipeline/import_vinvl.py.

Rows are joined to captions strictly by image id, never by row order; every seek is checked
against the id in the row. A bad row or image becomes a problem in the `ImportReport` (file,
1-based line, kind): with on_error='skip' the image is left out, with 'raise' the import stops.
"""

import base64
import binascii
import collections
import dataclasses
import json
import os
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional

import numpy as np

from input_pipeline import features as features_lib
from input_pipeline.region_features import box_features

ROI_DIM = 2048
BOX_DIMS = features_lib.NUM_BOX_DIMS

# Kinds of problem; each one drops a row or an image.
PROBLEM_KINDS = (
    'bad_row',             # not tab-separated as expected, or not UTF-8
    'bad_image_id',        # an id that the id normalisation cannot parse
    'bad_base64',          # feature field is not valid base64
    'bad_length',          # byte count not float32 [num_boxes, D] with D in {2048, 2054}
    'non_finite',          # NaN or Inf in the features
    'box_mismatch',        # stored box dims differ from the rects / image size
    'bad_json',            # predictions or extract row is not a JSON object
    'bad_prediction',      # objects / rects / classes malformed
    'missing_image_size',  # no positive image_h / image_w
    'box_count_mismatch',  # number of objects != number of feature rows
    'duplicate_id',        # a second row (or caption entry) for an image already seen
    'bad_index',           # .lineidx / imageid2idx.json unreadable or pointing at the wrong row
    'bad_caption',         # caption entry malformed
    'missing_predictions', # captioned image without a predictions row
    'missing_features',    # captioned image without a features row
)


class VinvlImportError(ValueError):
  """The import stopped: a problem under on_error='raise', or too many problems."""


class RowError(ValueError):
  """One bad row or entry; `kind` is one of PROBLEM_KINDS."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f'{kind}: {detail}')
    self.kind = kind
    self.detail = detail


@dataclasses.dataclass
class ImportReport:
  """Problem and warning counts, statistics and the first `max_messages` messages of an import.

  `problem()` raises VinvlImportError at once when on_error == 'raise'.
  """
  on_error: str = 'skip'
  max_messages: int = 20
  problems: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  warnings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  messages: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.on_error not in ('skip', 'raise'):
      raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")

  def problem(self, kind: str, where: str, detail: str):
    assert kind in PROBLEM_KINDS, kind
    self.problems[kind] += 1
    message = f'{where}: {kind}: {detail}'
    self._keep(message)
    if self.on_error == 'raise':
      raise VinvlImportError(message)

  def warning(self, kind: str, where: str, detail: str):
    self.warnings[kind] += 1
    self._keep(f'{where}: warning {kind}: {detail}')

  def _keep(self, message: str):
    if len(self.messages) < self.max_messages:
      self.messages.append(message)

  @property
  def dropped_fraction(self) -> float:
    """Fraction of captioned images that did not become a record."""
    wanted = self.stats['caption_images']
    return (wanted - self.stats['records']) / wanted if wanted else 0.0

  def to_dict(self) -> dict:
    return {'problems': dict(self.problems), 'warnings': dict(self.warnings),
            'stats': dict(self.stats), 'dropped_fraction': self.dropped_fraction,
            'messages': list(self.messages)}

  def summary(self) -> str:
    lines = [f'{self.stats["records"]} records from {self.stats["caption_images"]} captioned '
             f'images ({self.dropped_fraction:.2%} dropped)']
    for title, counts in (('problems', self.problems), ('warnings', self.warnings)):
      if counts:
        lines.append(f'{title}: ' + ', '.join(f'{k}={v}' for k, v in sorted(counts.items())))
    lines.extend('  ' + m for m in self.messages)
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class VinvlOptions:
  """How rows become records.

  feature_dim: D of the stored region features; inputs of D - 6 dims get the box appended.
  prefer_gt_objects: tags from "gt_objects" when present and one per region (use_gtlabels=1).
  verify_boxes: check that stored box dims match the rects and image size within box_atol.
  use_index: seek with .lineidx + imageid2idx.json when both exist, else read in file order.
  normalize_ids: key every id as str(int(k.split('_')[-1])), as the authors' VQA/VE/RE code.
  """
  feature_dim: int = ROI_DIM + BOX_DIMS
  prefer_gt_objects: bool = False
  verify_boxes: bool = True
  box_atol: float = 1e-3
  use_index: bool = True
  normalize_ids: bool = False

  def image_id(self, raw: Any) -> str:
    raw = str(raw).strip()
    if not self.normalize_ids:
      return raw
    try:
      return str(int(raw.split('_')[-1]))
    except ValueError:
      raise RowError('bad_image_id', f'cannot normalise image id {raw!r}') from None


class TsvFile:
  """A tab-separated file read as bytes, with `.lineidx` random access when it exists."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    self.lineidx_path = os.path.splitext(self.path)[0] + '.lineidx'
    self._offsets: Optional[list[int]] = None
    self._file: Optional[BinaryIO] = None

  def rows(self) -> Iterator[tuple[int, bytes]]:
    """Yields (1-based line number, raw line) for every non-blank line."""
    with open(self.path, 'rb') as f:
      for line_no, line in enumerate(f, 1):
        if line.strip():
          yield line_no, line

  def load_offsets(self) -> list[int]:
    """The .lineidx byte offsets; RowError('bad_index') when they are not increasing ints."""
    if self._offsets is None:
      try:
        with open(self.lineidx_path, 'rb') as f:
          offsets = [int(line) for line in f if line.strip()]
      except ValueError:
        raise RowError('bad_index', f'{self.lineidx_path} holds a non-integer offset') from None
      if any(b <= a for a, b in zip(offsets, offsets[1:])) or (offsets and offsets[0] < 0):
        raise RowError('bad_index', f'{self.lineidx_path} offsets are not increasing')
      self._offsets = offsets
    return self._offsets

  def seek(self, row: int) -> tuple[int, bytes]:
    """(1-based line number, raw line) of 0-based `row`, found through the .lineidx offsets."""
    offsets = self.load_offsets()
    if not 0 <= row < len(offsets):
      raise RowError('bad_index', f'row {row} is not among the {len(offsets)} rows '
                     f'of {self.lineidx_path}')
    if self._file is None:
      self._file = open(self.path, 'rb')  # pylint: disable=consider-using-with
    self._file.seek(offsets[row])
    return row + 1, self._file.readline()

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None


def split_fields(line: bytes, num_fields: int, maxsplit: int = -1) -> list[str]:
  """The stripped tab-separated fields of a line, which must number `num_fields`."""
  try:
    fields = [field.decode('utf-8').strip() for field in line.split(b'\t', maxsplit)]
  except UnicodeDecodeError as e:
    raise RowError('bad_row', f'not UTF-8 ({e})') from None
  if len(fields) != num_fields:
    raise RowError('bad_row', f'expected {num_fields} tab-separated fields, got {len(fields)}')
  return fields


def load_image_index(path: str, options: VinvlOptions) -> dict[str, int]:
  """imageid2idx.json as {image id: row}; RowError('bad_index') if unusable or ambiguous."""
  def no_duplicates(pairs):
    keys = [options.image_id(k) for k, _ in pairs]
    if len(set(keys)) != len(keys):
      raise RowError('bad_index', 'an image id appears twice')
    return dict(zip(keys, (v for _, v in pairs)))
  try:
    with open(path, 'rb') as f:
      index = json.load(f, object_pairs_hook=no_duplicates)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RowError('bad_index', f'not valid JSON ({e})') from None
  except RowError as e:
    raise RowError('bad_index', e.detail) from None
  if not isinstance(index, dict) or not all(isinstance(v, int) for v in index.values()):
    raise RowError('bad_index', 'expected a JSON object of image id -> row number')
  return index


def rows_by_id(tsv: TsvFile, wanted: Iterable[str], num_fields: int, report: ImportReport,
               options: VinvlOptions, index: Optional[dict[str, int]] = None,
               seen: Optional[set] = None) -> Iterator[tuple[str, str, list[str]]]:
  """Yields (image id, 'path:line', fields) of the first row of each wanted image.

  With `index` the rows are sought in the order of `wanted` and the id in each row is checked;
  without it the file is read in order. Bad rows are reported, not yielded. `seen` collects the
  wanted ids that have a row (good or bad), so that the caller can tell missing from bad.
  """
  seen = set() if seen is None else seen
  if index is not None:
    for image_id in wanted:
      if image_id not in index:
        continue
      seen.add(image_id)
      where = f'{tsv.path}:{index[image_id] + 1}'
      try:
        _, line = tsv.seek(index[image_id])
        fields = split_fields(line, num_fields)
        if options.image_id(fields[0]) != image_id:
          raise RowError('bad_index', f'imageid2idx.json points {image_id!r} to the row of '
                         f'{fields[0]!r}')
      except RowError as e:
        report.problem(e.kind, where, e.detail)
        continue
      yield image_id, where, fields
    return
  wanted = set(wanted)
  for line_no, line in tsv.rows():
    where = f'{tsv.path}:{line_no}'
    try:
      # Only the id is parsed before the row is known to be wanted: rows of other images are
      # skipped unchecked (and cheaply).
      image_id = options.image_id(split_fields(line, 2, maxsplit=1)[0])
      if image_id not in wanted:
        report.stats['rows_without_captions'] += 1
        continue
      fields = split_fields(line, num_fields)
    except RowError as e:
      report.problem(e.kind, where, e.detail)
      continue
    if image_id in seen:
      report.problem('duplicate_id', where, f'second row for image {image_id!r}; the first '
                     'one is kept')
    else:
      seen.add(image_id)
      yield image_id, where, fields


def open_index(tsv: TsvFile, report: ImportReport,
               options: VinvlOptions) -> Optional[dict[str, int]]:
  """The imageid2idx.json beside `tsv` when it and the .lineidx can be used, else None."""
  index_path = os.path.join(os.path.dirname(os.path.abspath(tsv.path)), 'imageid2idx.json')
  if not (options.use_index and os.path.isfile(index_path)
          and os.path.isfile(tsv.lineidx_path)):
    return None
  try:
    tsv.load_offsets()
    return load_image_index(index_path, options)
  except RowError as e:
    report.problem(e.kind, index_path, f'{e.detail}; reading {tsv.path} in file order instead')
    return None


def decode_features(encoded: str, num_boxes: int) -> np.ndarray:
  """float32 [num_boxes, D] from base64; `num_boxes` must divide the values evenly."""
  try:
    data = base64.b64decode(encoded, validate=True)
  except (binascii.Error, ValueError) as e:
    raise RowError('bad_base64', str(e)) from None
  if len(data) % 4:
    raise RowError('bad_length', f'{len(data)} bytes is not a whole number of float32')
  values = np.frombuffer(data, dtype=np.float32)
  if num_boxes <= 0 or values.size % num_boxes:
    raise RowError('bad_length', f'{values.size} values do not split into {num_boxes} boxes')
  features = values.reshape(num_boxes, -1).copy()
  if not np.isfinite(features).all():
    bad_boxes = np.flatnonzero(~np.isfinite(features).all(axis=1))
    raise RowError('non_finite', f'NaN/Inf in boxes {bad_boxes[:5].tolist()}')
  return features


def with_box_features(raw: np.ndarray, boxes6: np.ndarray, options: VinvlOptions) -> np.ndarray:
  """Region features [N, feature_dim]: `raw` kept when it has the box dims, else extended."""
  if raw.shape[1] == options.feature_dim:
    if options.verify_boxes:
      error = np.abs(raw[:, -BOX_DIMS:].astype(np.float64) - boxes6).max(initial=0.0)
      if not error <= options.box_atol:
        raise RowError('box_mismatch', f'stored box dims differ from the rects by {error:.3g}')
    return raw
  if raw.shape[1] == options.feature_dim - BOX_DIMS:
    return np.concatenate([raw, boxes6], axis=1)
  raise RowError('bad_length', f'{raw.shape[1]} values per box; expected '
                 f'{options.feature_dim} or {options.feature_dim - BOX_DIMS}')


@dataclasses.dataclass
class Prediction:
  """The detections of one image: classes [N], rects float32 [N, 4], size in pixels."""
  classes: list
  rects: np.ndarray
  image_h: int
  image_w: int
  gt_classes: Optional[list] = None
  where: str = ''


def _objects(value: Any, name: str) -> tuple[list, np.ndarray]:
  if not isinstance(value, list):
    raise RowError('bad_prediction', f'"{name}" must be a list')
  classes, rects = [], []
  for i, obj in enumerate(value):
    if not isinstance(obj, dict) or not isinstance(obj.get('class'), str):
      raise RowError('bad_prediction', f'{name}[{i}] has no "class" string')
    rect = obj.get('rect')
    if (not isinstance(rect, list) or len(rect) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rect)
        or not np.isfinite(rect).all()):
      raise RowError('bad_prediction', f'{name}[{i}] "rect" is not 4 finite numbers')
    classes.append(obj['class'])
    rects.append(rect)
  return classes, np.asarray(rects, np.float32).reshape(-1, 4)


def _json_object(text: str) -> dict:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise RowError('bad_json', str(e)) from None
  if not isinstance(data, dict):
    raise RowError('bad_json', f'expected a JSON object, got {type(data).__name__}')
  return data


def parse_prediction(text: str) -> Prediction:
  """Parses the JSON field of a predictions.tsv row."""
  data = _json_object(text)
  size = [data.get('image_h'), data.get('image_w')]
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in size):
    raise RowError('missing_image_size', f'image_h={size[0]!r}, image_w={size[1]!r}')
  classes, rects = _objects(data.get('objects'), 'objects')
  gt_classes = _objects(data['gt_objects'], 'gt_objects')[0] if 'gt_objects' in data else None
  return Prediction(classes, rects, int(round(size[0])), int(round(size[1])), gt_classes)


def _tags(prediction: Prediction, report: ImportReport, options: VinvlOptions) -> list:
  """Detected classes, or gt_objects' classes when preferred and one per region."""
  gt_classes = prediction.gt_classes
  if not options.prefer_gt_objects or gt_classes is None:
    return prediction.classes
  if len(gt_classes) == len(prediction.classes):
    report.stats['gt_tags'] += 1
    return gt_classes
  report.warning('gt_objects_unaligned', prediction.where, f'{len(gt_classes)} gt_objects for '
                 f'{len(prediction.classes)} regions; the detected classes are the tags')
  return prediction.classes


def make_record(image_id: str, image_size: tuple[int, int], region_features: np.ndarray,
                boxes: np.ndarray, tags: list, captions: list,
                phrases: list) -> dict[str, Any]:
  """An image record (features.py) in which every phrase region is unknown (-1)."""
  return {
      'image_id': image_id,
      'image_png': b'',
      'image_size': np.asarray(image_size, np.int32),
      'region_features': region_features,
      'boxes': np.asarray(boxes, np.float32),
      'tags': list(tags),
      'captions': list(captions),
      'phrases': phrases,
      'phrase_regions': [[features_lib.IGNORE_LABEL] * len(p) for p in phrases],
  }


# phrases_for(image_id, caption_index, caption) -> list of phrase tuples of that caption.
PhrasesFor = Callable[[str, int, str], list]


def _phrases(image_id: str, captions: list, phrases_for: PhrasesFor) -> list:
  return [phrases_for(image_id, k, caption) for k, caption in enumerate(captions)]


def _report_missing(captions: Iterable[str], seen: set, kind: str, path: str,
                    report: ImportReport):
  for image_id in captions:
    if image_id not in seen:
      report.problem(kind, path, f'no row for captioned image {image_id!r}')


def iter_vinvl_records(features_path: str, predictions_path: str, captions: dict[str, list],
                       phrases_for: PhrasesFor, report: ImportReport,
                       options: VinvlOptions) -> Iterator[dict]:
  """Image records of the captioned images found in features.tsv and predictions.tsv.

  `captions` is {image id: [caption]}. Records come in caption order when the features are
  sought through imageid2idx.json, else in features-file order.
  """
  predictions, seen = {}, set()
  for image_id, where, fields in rows_by_id(TsvFile(predictions_path), captions, 2, report,
                                            options, seen=seen):
    try:
      predictions[image_id] = parse_prediction(fields[1])
      predictions[image_id].where = where
    except RowError as e:
      report.problem(e.kind, where, e.detail)
  _report_missing(captions, seen, 'missing_predictions', predictions_path, report)
  wanted = [image_id for image_id in captions if image_id in predictions]
  features_tsv = TsvFile(features_path)
  index, seen = open_index(features_tsv, report, options), set()
  try:
    for image_id, where, fields in rows_by_id(features_tsv, wanted, 3, report, options, index,
                                              seen):
      prediction = predictions[image_id]
      try:
        if not fields[1].isdigit():
          raise RowError('bad_row', f'num_boxes {fields[1][:20]!r} is not an integer')
        raw = decode_features(fields[2], int(fields[1]))
        if len(prediction.classes) != raw.shape[0]:
          raise RowError('box_count_mismatch', f'{raw.shape[0]} boxes but '
                         f'{len(prediction.classes)} objects at {prediction.where}')
        boxes6 = box_features(prediction.rects, prediction.image_h, prediction.image_w)
        region_features = with_box_features(raw, boxes6, options)
      except RowError as e:
        report.problem(e.kind, where, e.detail)
        continue
      report.stats['records'] += 1
      yield make_record(image_id, (prediction.image_h, prediction.image_w), region_features,
                        prediction.rects, _tags(prediction, report, options),
                        captions[image_id], _phrases(image_id, captions[image_id], phrases_for))
  finally:
    features_tsv.close()
  _report_missing(wanted, seen, 'missing_features', features_path, report)


def parse_extract_row(text: str, options: VinvlOptions) -> tuple[np.ndarray, list]:
  """(features float32 [N, D], tags [N]) of a tools/img_feat_extract.py row's JSON field."""
  data = _json_object(text)
  tags = data.get('predictions')
  if not isinstance(data.get('feature'), str):
    raise RowError('bad_prediction', '"feature" is not a base64 string')
  if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
    raise RowError('bad_prediction', '"predictions" is not a list of class strings')
  features = decode_features(data['feature'], len(tags))
  if features.shape[1] != options.feature_dim:
    raise RowError('bad_length', f'{features.shape[1]} values per box; expected '
                   f'{options.feature_dim}')
  # The boxes are only stored normalised: check that the widths agree with the corners.
  with_box_features(features, box_features(features[:, -BOX_DIMS:-2], 1.0, 1.0), options)
  return features, tags


def iter_extract_records(path: str, captions: dict[str, list], phrases_for: PhrasesFor,
                         report: ImportReport, options: VinvlOptions) -> Iterator[dict]:
  """Image records from a tools/img_feat_extract.py file (image_size (1, 1), unit boxes)."""
  tsv, seen = TsvFile(path), set()
  index = open_index(tsv, report, options)
  try:
    for image_id, where, fields in rows_by_id(tsv, captions, 2, report, options, index, seen):
      try:
        features, tags = parse_extract_row(fields[1], options)
      except RowError as e:
        report.problem(e.kind, where, e.detail)
        continue
      report.stats['records'] += 1
      yield make_record(image_id, (1, 1), features, features[:, -BOX_DIMS:-2], tags,
                        captions[image_id], _phrases(image_id, captions[image_id], phrases_for))
  finally:
    tsv.close()
  _report_missing(captions, seen, 'missing_features', path, report)
