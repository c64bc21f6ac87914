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

  sgb variant      a scene_graph_benchmark predictions.tsv whose objects carry their RoI
                   "feature" (base64 float32 [2048], TEST.OUTPUT_FEATURE True): no features.tsv.
  .pt variant      Oscar's Flickr `{split}_img_frcnn_feats.pt` {image_id: float [N, 2054]} with
                   optional `{split}_{type}_labels.pt` tags (torch is imported only for it).

Captions ({image id: [caption]}) and phrases are read by input_pipeline/import_vinvl.py.

Rows are joined to captions strictly by image id, never by row order; every seek is checked
against the id in the row. A bad row or image becomes a problem in the `ImportReport` (file,
1-based line, kind): with on_error='skip' the image is left out, with 'raise' the import stops.
"""

import base64
import binascii
import dataclasses
import json
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from input_pipeline import features as features_lib
from input_pipeline import jsonio
from input_pipeline.import_report import ImportReport
from input_pipeline.region_features import box_features
from input_pipeline.vinvl_rows import BOX_DIMS, RowError, TsvFile, VinvlImportError, VinvlOptions
from input_pipeline.vinvl_rows import open_index
from input_pipeline.vinvl_rows import rows_by_id


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
  check_magnitude(features)
  return features


def check_magnitude(features: np.ndarray) -> None:
  """RowError('absurd_value') for finite values beyond features.MAX_ABS_FEATURE (e.g. 3e38): they
  overflow in the first layer and stop training far from the record that holds them."""
  big = np.abs(features) > features_lib.MAX_ABS_FEATURE
  if big.any():
    rows = np.flatnonzero(big.any(axis=1))
    raise RowError('absurd_value', f'|value| up to {np.abs(features).max():.3g} (limit '
                   f'{features_lib.MAX_ABS_FEATURE:g}) in boxes {rows[:5].tolist()}')


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
  return prediction_from(_json_object(text))


def prediction_from(data: dict) -> Prediction:
  """The Prediction of a predictions.tsv row's decoded JSON object."""
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
  def parse(text):
    features, tags = parse_extract_row(text, options)
    return (1, 1), features, features[:, -BOX_DIMS:-2], tags
  return _single_file_records(path, captions, phrases_for, report, options, parse)


def _single_file_records(path: str, captions: dict[str, list], phrases_for: PhrasesFor,
                         report: ImportReport, options: VinvlOptions,
                         parse: Callable[[str], tuple]) -> Iterator[dict]:
  """Records of a file of `id \t json` rows holding features and tags together; `parse(json)`
  gives (image_size, region_features, boxes, tags) or raises RowError."""
  tsv, seen = TsvFile(path), set()
  index = open_index(tsv, report, options)
  try:
    for image_id, where, fields in rows_by_id(tsv, captions, 2, report, options, index, seen):
      try:
        size, region_features, boxes, tags = parse(fields[1])
      except RowError as e:
        report.problem(e.kind, where, e.detail)
        continue
      report.stats['records'] += 1
      yield make_record(image_id, size, region_features, boxes, tags, captions[image_id],
                        _phrases(image_id, captions[image_id], phrases_for))
  finally:
    tsv.close()
  _report_missing(captions, seen, 'missing_features', path, report)


def parse_sgb_row(text: str, options: VinvlOptions) -> tuple[Prediction, np.ndarray]:
  """(Prediction, region features [N, feature_dim]) of a scene_graph_benchmark predictions.tsv
  row whose objects carry their RoI feature (`"feature": base64(float32 [2048])`, written with
  TEST.OUTPUT_FEATURE True): the route the authors give for new images."""
  data = _json_object(text)
  prediction = prediction_from(data)
  rows = []
  for i, obj in enumerate(data['objects']):
    if not isinstance(obj.get('feature'), str):
      raise RowError('bad_prediction', f'objects[{i}] has no base64 "feature" (run '
                     'scene_graph_benchmark with TEST.OUTPUT_FEATURE True)')
    rows.append(decode_features(obj['feature'], 1))
  if not rows:
    raise RowError('bad_prediction', 'no objects')
  raw = np.concatenate(rows, axis=0)
  boxes6 = box_features(prediction.rects, prediction.image_h, prediction.image_w)
  return prediction, with_box_features(raw, boxes6, options)


def iter_sgb_records(path: str, captions: dict[str, list], phrases_for: PhrasesFor,
                     report: ImportReport, options: VinvlOptions) -> Iterator[dict]:
  """Image records from one scene_graph_benchmark predictions.tsv with per-object features."""
  def parse(text):
    prediction, region_features = parse_sgb_row(text, options)
    return ((prediction.image_h, prediction.image_w), region_features, prediction.rects,
            _tags(prediction, report, options))
  return _single_file_records(path, captions, phrases_for, report, options, parse)


def _pt_labels(value: Any, num_regions: int) -> list:
  """Tags of one image of Oscar's `{split}_{type}_labels.pt`: a list of {"class"} (one per
  region) or a space-separated string of one class per region."""
  if isinstance(value, str):
    tags = value.split()
  elif isinstance(value, list) and all(isinstance(v, dict) and isinstance(v.get('class'), str)
                                       for v in value):
    tags = [v['class'] for v in value]
  else:
    raise RowError('bad_prediction', 'labels must be a list of {"class"} or a string')
  if len(tags) != num_regions:
    raise RowError('box_count_mismatch', f'{len(tags)} labels for {num_regions} regions')
  return tags


def iter_pt_records(path: str, labels_path: Optional[str], captions: dict[str, list],
                    phrases_for: PhrasesFor, report: ImportReport,
                    options: VinvlOptions) -> Iterator[dict]:
  """Image records from Oscar's Flickr `{split}_img_frcnn_feats.pt`, {image_id: float [N, D]}
  with the normalised box in the last 6 dims (image_size (1, 1), unit boxes), tags from the
  `{split}_{type}_labels.pt` beside it when given (else empty tags)."""
  table = jsonio.load_container(path, VinvlImportError)
  if not isinstance(table, dict):
    raise VinvlImportError(f'{path}: a {type(table).__name__}; expected Oscar\'s '
                           '{split}_img_frcnn_feats.pt, a dict {image_id: float tensor [N, D]}')
  labels = jsonio.load_container(labels_path, VinvlImportError) if labels_path else None
  if labels is not None and not isinstance(labels, dict):
    raise VinvlImportError(f'{labels_path}: expected a dict {{image_id: labels}}')
  by_id = {}
  for raw_id, value in table.items():
    try:
      by_id.setdefault(options.image_id(raw_id), (raw_id, value))
    except RowError as e:
      report.problem(e.kind, f'{path}: image {raw_id!r}', e.detail)
  label_ids = {options.image_id(k): v for k, v in labels.items()} if labels else {}
  for image_id in captions:
    if image_id not in by_id:
      report.problem('missing_features', path, f'no entry for captioned image {image_id!r}')
      continue
    raw_id, value = by_id[image_id]
    where = f'{path}: image {raw_id!r}'
    try:
      features = np.asarray(value.numpy() if hasattr(value, 'numpy') else value, np.float32)
      if features.ndim != 2 or features.shape[1] != options.feature_dim:
        raise RowError('bad_length', f'features of shape {list(features.shape)}; expected '
                       f'[N, {options.feature_dim}] with the box in the last {BOX_DIMS} dims')
      if not np.isfinite(features).all():
        raise RowError('non_finite', 'NaN/Inf in the features')
      check_magnitude(features)
      with_box_features(features, box_features(features[:, -BOX_DIMS:-2], 1.0, 1.0), options)
      tags = ([''] * len(features) if labels is None
              else _pt_labels(label_ids.get(image_id, ''), len(features)))
    except RowError as e:
      report.problem(e.kind, where, e.detail)
      continue
    report.stats['records'] += 1
    yield make_record(image_id, (1, 1), features.copy(), features[:, -BOX_DIMS:-2], tags,
                      captions[image_id], _phrases(image_id, captions[image_id], phrases_for))
