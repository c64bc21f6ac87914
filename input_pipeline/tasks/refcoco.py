"""Imports RefCOCO / RefCOCO+ / RefCOCOg as an 're' task split (input_pipeline/tasks/examples.py).

  python -m input_pipeline.tasks.refcoco --refs='refcoco+/refs(unc).p' \\
      --instances=refcoco+/instances.json --ref_split=testA --images=data/coco_vinvl:train \\
      --out_dir=data/refcoco+ --split=testA

Inputs: the refs (pickle, as distributed, or JSON), a list of {"ref_id", "image_id", "ann_id",
"split", "sentences": [{"sent"}, ...]}, and `instances.json` with "annotations":
[{"id", "image_id", "bbox": [x, y, w, h]}]. One example per sentence of every ref of
`ref_split`: text = the sentence, target_box = the annotation's bbox as [x, y, x + w, y + h]
(pixels of the COCO image, the frame of the VinVL boxes). The batch's `region_iou` is the IoU of
each region box with it (tasks/iterators.py). Phrases are not used for RE (spec §1.2).
Bad refs, unknown annotations and missing images are reported (file and index) and left out.
Pickle runs code from the file: load trusted files only.
"""

import json
import pickle
import sys
from typing import Any, Optional, Sequence

from absl import flags

from input_pipeline import cli
from input_pipeline import ownership
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
  """COCO [x, y, w, h] -> [x1, y1, x2, y2]."""
  x, y, w, h = (float(v) for v in bbox)
  return [x, y, x + w, y + h]


def load_refs(path: str) -> list:
  """The refs list from a pickle (refs(unc).p) or JSON file."""
  try:
    if path.endswith('.json'):
      with open(path, encoding='utf-8') as f:
        refs = json.load(f)
    else:
      with open(path, 'rb') as f:
        refs = pickle.load(f)  # Trusted files only.
  except (OSError, pickle.UnpicklingError, json.JSONDecodeError, UnicodeDecodeError,
          EOFError) as e:
    raise examples_lib.TaskDataError(f'{path}: cannot read the refs ({e}).') from None
  if not isinstance(refs, list):
    raise examples_lib.TaskDataError(f'{path}: expected a list of refs, got '
                                     f'{type(refs).__name__}.')
  return refs


def load_boxes(instances: str) -> dict[Any, list[float]]:
  """{annotation id: xyxy box} from instances.json."""
  try:
    with open(instances, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise examples_lib.TaskDataError(f'{instances}: cannot read JSON ({e}).') from None
  if not isinstance(data, dict) or not isinstance(data.get('annotations'), list):
    raise examples_lib.TaskDataError(f'{instances}: expected {{"annotations": [...]}}.')
  boxes = {}
  for i, ann in enumerate(data['annotations']):
    bbox = ann.get('bbox') if isinstance(ann, dict) else None
    if (not isinstance(bbox, list) or len(bbox) != 4
        or not all(isinstance(v, (int, float)) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0):
      raise examples_lib.TaskDataError(f'{instances}: annotations[{i}] has no positive '
                                       f'"bbox": [x, y, w, h] (got {bbox!r}).')
    boxes[ann.get('id')] = xywh_to_xyxy(bbox)
  return boxes


def read_candidates(refs: str, instances: str, ref_split: str, report: importing.ImportReport,
                    *, normalize_ids: bool = True) -> list[importing.Candidate]:
  """The 're' examples of the refs of `ref_split`: one per sentence."""
  boxes = load_boxes(instances)
  candidates = []
  for i, ref in enumerate(load_refs(refs)):
    where = f'{refs}: refs[{i}]'
    if not isinstance(ref, dict) or ref.get('split') != ref_split:
      if not isinstance(ref, dict):
        report.stats['examples_read'] += 1
        report.problem('bad_ref', where, 'not a dict')
      continue
    sentences = ref.get('sentences')
    if not isinstance(sentences, list) or 'image_id' not in ref or 'ann_id' not in ref:
      report.stats['examples_read'] += 1
      report.problem('bad_ref', where, 'expected "ref_id", "image_id", "ann_id" and '
                     '"sentences": [{"sent"}]')
      continue
    for k, sentence in enumerate(sentences):
      sentence_where = f'{where} sentences[{k}]'
      report.stats['examples_read'] += 1
      text = sentence.get('sent') if isinstance(sentence, dict) else None
      if not isinstance(text, str) or not text.strip():
        report.problem('bad_ref', sentence_where, 'no "sent" string')
        continue
      if ref['ann_id'] not in boxes:
        report.problem('unknown_annotation', sentence_where, f'ann_id {ref["ann_id"]!r} is not '
                       f'in {instances}')
        continue
      try:
        image_id = importing.normalize_image_id(ref['image_id'], normalize_ids)
      except examples_lib.TaskDataError as e:
        report.problem('bad_image_id', sentence_where, str(e))
        continue
      candidates.append(importing.Candidate(example={
          'example_id': f'{ref.get("ref_id", i)}_{sentence.get("sent_id", k)}',
          'image_id': image_id, 'text': text, 'phrases': [],
          'target_box': boxes[ref['ann_id']]}, where=sentence_where))
  return candidates


def import_refcoco(*, refs: str, instances: str, ref_split: str, out_dir: str, split: str,
                   image_sources: Sequence[tuple[str, str]], vocab_dir: Optional[str] = None,
                   normalize_ids: bool = True, on_error: str = 'skip',
                   max_error_fraction: float = 0.01,
                   overwrite: bool = False) -> examples_lib.TaskInfo:
  """Imports the refs of `ref_split` as split `split` of `out_dir` through the `refcoco_task`
  builder (sources/import_builders.py); returns the TaskInfo."""
  from input_pipeline.sources import import_builders  # pylint: disable=g-import-not-at-top
  ownership.claim(out_dir, 'task')
  return import_builders.import_task_split(
      import_builders.RefcocoTask, out_dir, split, overwrite=overwrite, images=image_sources,
      vocab_dir=vocab_dir, refs=refs, instances=instances, ref_split=ref_split,
      normalize_ids=normalize_ids, on_error=on_error, max_error_fraction=max_error_fraction)


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('refs', None, 'refs(unc).p (pickle) or a JSON list', flag_values=v)
  flags.DEFINE_string('instances', None, 'COCO instances.json with the boxes of the referred objects', flag_values=v)
  flags.DEFINE_string('ref_split', None, 'train, val, testA, testB, test (and the default '
                      '--split)', flag_values=v)


def _import(a: flags.FlagValues) -> examples_lib.TaskInfo:
  return import_refcoco(refs=a.refs, instances=a.instances, ref_split=a.ref_split,
                        **cli.importer_args(a, split=a.split or a.ref_split))


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_importer('python -m input_pipeline.tasks.refcoco', argv, _define, _import,
                          required=('refs', 'instances', 'ref_split'), split_required=False)


if __name__ == '__main__':
  sys.exit(main())
