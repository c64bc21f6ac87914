"""Caption files of the VinVL import, in the formats the authors and COCO publish.

  karpathy  dataset_coco.json / dataset_flickr30k.json: {"images": [{"cocoid"|"imgid"|
            "filename", "split", "sentences": [{"raw"}, ...]}]}, filtered by Karpathy split.
  coco      COCO's official captions_{train,val}2014.json: {"images": [{"id", "file_name"}],
            "annotations": [{"image_id", "id", "caption"}]} (or "annotations" alone).
  list      [{"image_id", "caption" | "text"(, "phrases")}]: the authors' custom-data and SPICE
            input files ({"image_id", "text"}) and their phrase-parsed `processed_*.json`.
  dict      {image_id: [caption, ...]} (values may be JSON strings of that list), as JSON or as
            the authors' coco_ir / flickr `{split}_captions.pt` torch pickle (torch is imported
            only for a .pt file).
Anything else is refused naming the structure seen and the formats expected.

Caption identity. Phrase files produced by SPICE key caption k of an image as "{id}_{k}",
counting every caption entry of that image in the file in order, including entries the import
drops (an empty caption). So each kept caption carries its source index `k` among all entries
of its image, and phrases are looked up by it, never by the position among the kept captions.
A JSON object with a repeated key (an image listed twice in a dict) is refused, not resolved by
letting the last value win.
"""

import dataclasses
import os
from typing import Any, Iterable, Optional

from input_pipeline import jsonio
from input_pipeline import phrase_files
from input_pipeline.import_report import ImportReport
from input_pipeline.vinvl_rows import RowError, VinvlImportError, VinvlOptions

CAPTION_ID_FIELDS = ('auto', 'cocoid', 'imgid', 'filename')
FORMATS = ('karpathy', 'coco', 'list', 'dict')


@dataclasses.dataclass
class CaptionSet:
  """The captions of an import.

  Attributes:
    captions: {image id: [caption text]} of the kept captions, in file order.
    keys: {image id: [source index k of each kept caption]} (see the module docstring).
    source_counts: {image id: caption entries of that image in the file, kept or not}.
    embedded: phrases stored in the caption file itself, keyed (image id, k).
    fmt: the format read (one of FORMATS).
  """
  captions: dict = dataclasses.field(default_factory=dict)
  keys: dict = dataclasses.field(default_factory=dict)
  source_counts: dict = dataclasses.field(default_factory=dict)
  embedded: phrase_files.PhraseTable = dataclasses.field(default_factory=dict)
  fmt: str = ''

  def add(self, image_id: str, k: int, text: str) -> None:
    self.captions.setdefault(image_id, []).append(text)
    self.keys.setdefault(image_id, []).append(k)

  def count(self, image_id: str) -> int:
    """Counts one caption entry of `image_id`; returns its source index."""
    k = self.source_counts.get(image_id, 0)
    self.source_counts[image_id] = k + 1
    return k


def _karpathy_id(image: dict, id_field: str) -> Any:
  if id_field == 'auto':
    id_field = 'cocoid' if 'cocoid' in image else 'filename'
  if id_field not in image:
    raise RowError('bad_caption', f'no "{id_field}"')
  if id_field == 'filename':
    return os.path.splitext(str(image['filename']))[0]
  return image[id_field]


def _read_karpathy(images: list, path: str, splits: Optional[set], id_field: str,
                   options: VinvlOptions, report: ImportReport, out: CaptionSet) -> None:
  for i, image in enumerate(images):
    where = f'{path}: images[{i}]'
    if isinstance(image, dict) and splits is not None and image.get('split') not in splits:
      report.stats['caption_images_other_splits'] += 1
      continue
    try:
      if not isinstance(image, dict) or not isinstance(image.get('sentences'), list):
        raise RowError('bad_caption', 'expected an object with a "sentences" list')
      image_id = options.image_id(_karpathy_id(image, id_field))
      raws = [s.get('raw') if isinstance(s, dict) else None for s in image['sentences']]
      if not raws or not all(isinstance(r, str) and r.strip() for r in raws):
        raise RowError('bad_caption', 'every sentence needs a non-empty "raw" string')
      if image_id in out.captions:
        raise RowError('duplicate_id', f'second entry for image {image_id!r}; the first is kept')
    except RowError as e:
      report.stats['caption_images'] += 1
      report.problem(e.kind, where, e.detail)
      continue
    for raw in raws:
      out.add(image_id, out.count(image_id), raw.strip())


def _read_list(entries: list, path: str, options: VinvlOptions, report: ImportReport,
               out: CaptionSet) -> None:
  """[{"image_id", "caption"|"text"(, "phrases")}] (also COCO's "annotations")."""
  for i, entry in enumerate(entries):
    where = f'{path}: entry {i}'
    try:
      if not isinstance(entry, dict) or isinstance(entry.get('image_id'), (bool, type(None))):
        raise RowError('bad_caption', 'expected {"image_id": ..., "caption" or "text": str}')
      image_id = options.image_id(entry['image_id'])
      k = out.count(image_id)  # Counted before any check: SPICE numbers every entry.
      text = entry.get('caption', entry.get('text'))
      if not isinstance(text, str) or not text.strip():
        raise RowError('bad_caption', f'caption {k} of image {image_id!r}: expected a '
                       'non-empty "caption" (or "text") string')
      phrases = None
      if 'phrases' in entry:
        try:
          phrases = phrase_files.normalize_tuples(entry['phrases'], where)
        except phrase_files.PhraseFileError as e:
          raise RowError('bad_caption', str(e)) from None
    except RowError as e:
      report.stats['caption_images'] += 1
      report.problem(e.kind, where, e.detail)
      continue
    if phrases is not None:
      out.embedded[(image_id, k)] = phrases
    out.add(image_id, k, text.strip())


def _read_dict(data: dict, path: str, options: VinvlOptions, report: ImportReport,
               out: CaptionSet) -> None:
  for raw_id, value in data.items():
    where = f'{path}: image {raw_id!r}'
    try:
      image_id = options.image_id(raw_id)
      if isinstance(value, str):
        try:
          value = jsonio.loads(value)
        except ValueError as e:
          raise RowError('bad_caption', f'not a JSON list of captions ({e})') from None
      if (not isinstance(value, list) or not value
          or not all(isinstance(c, str) and c.strip() for c in value)):
        raise RowError('bad_caption', 'expected a non-empty list of caption strings')
      if image_id in out.captions:
        raise RowError('duplicate_id', f'{raw_id!r} normalises to the id of an earlier entry')
    except RowError as e:
      report.stats['caption_images'] += 1
      report.problem(e.kind, where, e.detail)
      continue
    for caption in value:
      out.add(image_id, out.count(image_id), caption.strip())


def detect_format(data: Any, path: str) -> str:
  """The caption format of loaded data (module docstring), or VinvlImportError naming it."""
  if isinstance(data, dict) and isinstance(data.get('annotations'), list):
    return 'coco'
  if isinstance(data, dict) and isinstance(data.get('images'), list):
    first = data['images'][0] if data['images'] else {}
    if isinstance(first, dict) and 'sentences' not in first:
      raise VinvlImportError(
          f'{path}: "images" entries have no "sentences" (keys {sorted(first)[:8]}) and there '
          'are no "annotations": neither Karpathy\'s dataset_*.json nor COCO\'s captions_*.json')
    return 'karpathy'
  if isinstance(data, list):
    return 'list'
  if isinstance(data, dict):
    return 'dict'
  raise VinvlImportError(f'{path}: a {type(data).__name__} is no caption format; expected one of '
                         f'{FORMATS} (see input_pipeline/captions.py)')


def load_captions(path: str, report: ImportReport, options: VinvlOptions, *,
                  karpathy_splits: Optional[Iterable[str]] = None,
                  id_field: str = 'auto') -> CaptionSet:
  """The captions of `path` (module docstring).

  `karpathy_splits` keeps only the Karpathy images of those splits (None: all); the other
  formats have no split field and keep everything. `id_field` picks the Karpathy image id
  ('auto': cocoid when present, else the file name without extension). Bad entries are
  reported; each counts as one captioned image that was dropped.
  """
  path = os.fspath(path)
  if id_field not in CAPTION_ID_FIELDS:
    raise ValueError(f'caption id field must be one of {CAPTION_ID_FIELDS}, got {id_field!r}')
  if path.endswith('.pt'):
    data = jsonio.load_container(path, VinvlImportError)
  else:
    data = jsonio.read_json(path, VinvlImportError, 'captions')
  out = CaptionSet(fmt=detect_format(data, path))
  if out.fmt == 'karpathy':
    splits = None if karpathy_splits is None else set(karpathy_splits)
    _read_karpathy(data['images'], path, splits, id_field, options, report, out)
  elif out.fmt == 'coco':
    _read_list(data['annotations'], path, options, report, out)
  elif out.fmt == 'list':
    _read_list(data, path, options, report, out)
  else:
    _read_dict({str(k): v for k, v in data.items()}, path, options, report, out)
  report.stats['caption_images'] += len(out.captions)
  report.stats['captions'] += sum(len(c) for c in out.captions.values())
  return out
