"""Importing task data: image ids, the image records of existing datasets, writing a split.

Every importer (vqa.py, snli_ve.py, refcoco.py) reads its files into `Candidate` examples,
reporting bad entries in an `ImportReport` (input_pipeline/import_report.py); then its TFDS
builder (input_pipeline/sources/import_builders.py) calls `join_images`, which joins them to
their image records by image id, reports the examples whose image is missing, writes
`{split}_import_report.json` and fails when more than `max_error_fraction` of the examples read
were lost.
"""

import dataclasses
import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from input_pipeline import jsonio
from input_pipeline import phrase_extractor
from input_pipeline import storage
from input_pipeline.import_report import ImportReport
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks.examples import TaskDataError


def new_report(on_error: str = 'skip', max_messages: int = 20) -> ImportReport:
  """The ImportReport of a task import: examples read, examples kept."""
  return ImportReport(on_error=on_error, max_messages=max_messages, error=TaskDataError)


def normalize_image_id(raw: Any, normalize: bool) -> str:
  """`str(raw)`, or with `normalize` the authors' `str(int(k.split('_')[-1]))`."""
  raw = str(raw).strip()
  if not normalize:
    return raw
  try:
    return str(int(raw.split('_')[-1]))
  except ValueError:
    raise TaskDataError(f'cannot normalise image id {raw!r} with str(int(id.split("_")[-1]))'
                        ) from None


def load_image_records(sources: Sequence[tuple[str, str]], wanted: Iterable[str], *,
                       normalize_ids: bool, keep_captions: bool = False
                       ) -> dict[str, dict[str, Any]]:
  """The image records (features.py) of the `wanted` images, keyed by (normalised) id.

  Args:
    sources: (directory, split) of image-record datasets (storage.py), searched in order; the
      first record of an id wins.
    wanted: image ids to find, already normalised like `normalize_ids` does.
    normalize_ids: compare record ids after `normalize_image_id` (ids it cannot parse are kept).
    keep_captions: keep the records' captions and phrases (retrieval), else drop them.

  Returns:
    {id: record} with `image_id` set to the (normalised) id; ids not found are absent.
  """
  wanted, found = set(wanted), {}
  for directory, split in sources:
    source = storage.RecordSource(directory, split)
    for start in range(0, source.num_images, 256):
      serialized = source.read(np.arange(start, min(start + 256, source.num_images)))
      ids = tf.io.parse_example(  # Only the id is decoded for records that are not wanted.
          serialized.tolist(), {'image_id': tf.io.FixedLenFeature([], tf.string)})['image_id']
      for data, raw in zip(serialized, ids.numpy()):
        raw = raw.decode('utf-8')
        try:
          key = normalize_image_id(raw, normalize_ids)
        except TaskDataError:
          key = raw
        if key in wanted and key not in found:
          found[key] = _decoded_record(source.features.deserialize_example_np(data), key,
                                       keep_captions)
  return found


def _decoded_record(values: Mapping[str, Any], image_id: str,
                    keep_captions: bool) -> dict[str, Any]:
  text = lambda v: v.decode('utf-8') if isinstance(v, bytes) else str(v)
  captions = [text(c) for c in values['captions']] if keep_captions else []
  phrases = ([[tuple(text(w) for w in p) for p in caption] for caption in values['phrases']]
             if keep_captions else [])
  links = ([[int(r) for r in caption] for caption in values['phrase_regions']]
           if keep_captions else [])
  return {
      'image_id': image_id, 'image_png': bytes(values['image_png']),
      'image_size': np.asarray(values['image_size'], np.int32),
      'region_features': np.asarray(values['region_features'], np.float32),
      'boxes': np.asarray(values['boxes'], np.float32).reshape(-1, 4),
      'tags': [text(t) for t in values['tags']], 'captions': captions, 'phrases': phrases,
      'phrase_regions': links,
  }


@dataclasses.dataclass
class Candidate:
  """An imported example before its image is found: the example and where it was read."""
  example: dict[str, Any]
  where: str


def join_images(split: str, *, task: str, candidates: Sequence[Candidate],
                image_sources: Sequence[tuple[str, str]], normalize_ids: bool,
                report: ImportReport, report_dir: str, max_error_fraction: float = 0.01,
                num_answers: int = 0) -> list[tuple[dict[str, Any], list[tuple[int, dict]]]]:
  """Joins imported examples to their image records; what a task builder writes.

  Every example whose image is in no source is reported as 'missing_image' (its file and
  line/index) and left out; the report goes to `report_dir/{split}_import_report.json`, and
  the import fails when more than `max_error_fraction` of the examples read were lost to any
  problem. Returns [(image record, [(position, checked example)])]: the images in order of first
  use, each with its examples and their positions among all kept examples.
  """
  wanted = {c.example['image_id'] for c in candidates}
  images = load_image_records(image_sources, wanted, normalize_ids=normalize_ids)
  kept = []
  for candidate in candidates:
    if candidate.example['image_id'] in images:
      kept.append(candidate.example)
    else:
      report.problem('missing_image', candidate.where,
                     f'image {candidate.example["image_id"]!r} is in none of the image '
                     f'sources {[f"{d}/{s}" for d, s in image_sources]}')
  used = list(dict.fromkeys(e['image_id'] for e in kept))
  report.stats.update(examples=len(kept), images=len(used))
  read = report.stats['examples_read']
  lost = report.lost_fraction if read else 1.0
  report_path = os.path.join(report_dir, f'{split}_import_report.json')
  os.makedirs(report_dir, exist_ok=True)
  jsonio.write_json_atomically({'split': split, 'task': task, **report.to_dict(),
                                'lost_fraction': lost}, report_path)
  if not kept or lost > max_error_fraction:
    raise TaskDataError(f'{split}: {lost:.2%} of {read} examples were left out (more than '
                        f'max_error_fraction={max_error_fraction:.2%}); see {report_path}:\n'
                        f'{report.summary()}')
  checked = [examples_lib.validate_example(e, task, f'{split}: example {i}', num_answers)
             for i, e in enumerate(kept)]
  by_image = {image_id: [] for image_id in used}
  for position, example in enumerate(checked):
    by_image[example['image_id']].append((position, example))
  return [(images[image_id], by_image[image_id]) for image_id in used]


def phrases_or_extracted(table: Optional[Mapping[tuple[str, int], list]], key: str, text: str,
                         extract: bool) -> list:
  """Phrases of `text`: from `table[(key, 0)]` when given, else extracted, else none."""
  if table is not None and (key, 0) in table:
    return [list(p) for p in table[(key, 0)]]
  if extract:
    return [list(p) for p in phrase_extractor.extract_phrases(text)]
  return []


def retrieval_examples(records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
  """One retrieval example per caption of each record, in record then caption order."""
  for record in records:
    for k, caption in enumerate(record['captions']):
      yield {'example_id': f'{record["image_id"]}#{k}', 'image_id': record['image_id'],
             'text': caption, 'phrases': [list(p) for p in record['phrases'][k]],
             'phrase_regions': [int(r) for r in record['phrase_regions'][k]]}
