"""Rows of the VinVL TSV files: the import's errors and options, the TSV reader, id-joined rows.

`rows_by_id` joins rows to the captioned images strictly by image id. With `imageid2idx.json` and
a `.lineidx` beside the file the rows are sought; the index is used only when it names every row
of the file exactly once (otherwise a second row of an image could hide behind it), else the
file is read in order and a repeated id is a `duplicate_id` problem.
"""

import dataclasses
import json
import os
from typing import Any, BinaryIO, Iterable, Iterator, Optional

from input_pipeline import features as features_lib
from input_pipeline.import_report import ImportReport

ROI_DIM = 2048
BOX_DIMS = features_lib.NUM_BOX_DIMS

# Kinds of problem; each one drops a row or an image.
PROBLEM_KINDS = (
    'bad_row',             # not tab-separated as expected, or not UTF-8
    'bad_image_id',        # an id that the id normalisation cannot parse
    'bad_base64',          # feature field is not valid base64
    'bad_length',          # byte count not float32 [num_boxes, D] with D in {2048, 2054}
    'non_finite',          # NaN or Inf in the features
    'absurd_value',        # a finite feature beyond features.MAX_ABS_FEATURE (e.g. 3e38)
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
    'phrase_count_mismatch',  # the phrase file lists another number of captions for an image
)


class VinvlImportError(ValueError):
  """The import stopped: a problem under on_error='raise', or too many problems."""


class RowError(ValueError):
  """One bad row or entry; `kind` is one of PROBLEM_KINDS."""

  def __init__(self, kind: str, detail: str):
    super().__init__(f'{kind}: {detail}')
    self.kind = kind
    self.detail = detail


def new_report(on_error: str = 'skip', max_messages: int = 20) -> ImportReport:
  """The ImportReport of a VinVL import: captioned images read, records kept."""
  return ImportReport(on_error=on_error, max_messages=max_messages, error=VinvlImportError,
                      kinds=PROBLEM_KINDS, read_key='caption_images', kept_key='records')


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
    offsets = tsv.load_offsets()
    index = load_image_index(index_path, options)
  except RowError as e:
    report.problem(e.kind, index_path, f'{e.detail}; reading {tsv.path} in file order instead')
    return None
  if sorted(index.values()) != list(range(len(offsets))):
    # Rows the index does not name (e.g. a second row of an image) would go unseen.
    report.warning('index_incomplete', index_path,
                   f'names {len(set(index.values()))} distinct of the {len(offsets)} rows of '
                   f'{tsv.path}; reading it in file order instead, checking every id')
    return None
  return index
