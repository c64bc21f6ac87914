"""Imports SNLI-VE as a 've' task split (input_pipeline/tasks/examples.py).

  python -m input_pipeline.tasks.snli_ve --jsonl=snli_ve_train.jsonl \\
      --images=data/flickr_vinvl:train --out_dir=data/snli_ve --split=train \\
      [--phrases=train_sgs.json]

Input: JSON lines with "sentence2" (the hypothesis, text A), "gold_label" (contradiction 0,
neutral 1, entailment 2), "Flickr30K_ID" (the premise image) and "pairID" (the example id).
Region features come from image-record datasets (`--images=DIR:SPLIT`) joined by the image id
normalised as str(int(id.split('_')[-1])). A line with another label, malformed fields or a
missing image is reported with its file and line and left out.
Phrases: the authors' `{split}_sgs.json` ([[tuples, pairID]], `--phrases`), else the built-in
extractor unless `--nobuiltin_phrases`.
"""

import json
import sys
from typing import Optional, Sequence

from absl import flags

from input_pipeline import cli
from input_pipeline import ownership
from input_pipeline import phrase_files
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing

LABELS = {name: i for i, name in enumerate(examples_lib.VE_LABELS)}


def read_candidates(jsonl: str, phrases: Optional[str], report: importing.ImportReport, *,
                    normalize_ids: bool = True,
                    builtin_phrases: bool = True) -> list[importing.Candidate]:
  """The 've' examples of one jsonl file (phrases: its `{split}_sgs.json`, or None)."""
  table = phrase_files.load_phrase_file(phrases, 've') if phrases else None
  candidates = []
  with open(jsonl, encoding='utf-8') as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{jsonl}:{line_no}'
      report.stats['examples_read'] += 1
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        report.problem('bad_json', where, str(e))
        continue
      if (not isinstance(entry, dict) or not isinstance(entry.get('sentence2'), str)
          or not entry['sentence2'].strip() or 'Flickr30K_ID' not in entry):
        report.problem('bad_example', where, 'expected "sentence2", "gold_label", '
                       '"Flickr30K_ID" and "pairID"')
        continue
      if entry.get('gold_label') not in LABELS:
        report.problem('bad_label', where, f'gold_label {entry.get("gold_label")!r} is not one '
                       f'of {list(LABELS)}')
        continue
      try:
        image_id = importing.normalize_image_id(entry['Flickr30K_ID'], normalize_ids)
      except examples_lib.TaskDataError as e:
        report.problem('bad_image_id', where, str(e))
        continue
      pair_id = str(entry.get('pairID', f'line{line_no}'))
      candidates.append(importing.Candidate(example={
          'example_id': pair_id, 'image_id': image_id, 'text': entry['sentence2'],
          'label': LABELS[entry['gold_label']],
          'phrases': importing.phrases_or_extracted(table, pair_id, entry['sentence2'],
                                                       builtin_phrases)}, where=where))
  return candidates


def import_snli_ve(*, jsonl: str, out_dir: str, split: str,
                   image_sources: Sequence[tuple[str, str]], phrases: Optional[str] = None,
                   vocab_dir: Optional[str] = None, normalize_ids: bool = True,
                   builtin_phrases: bool = True, on_error: str = 'skip',
                   max_error_fraction: float = 0.01,
                   overwrite: bool = False) -> examples_lib.TaskInfo:
  """Imports one SNLI-VE split into `out_dir` through the `snli_ve_task` builder
  (sources/import_builders.py); returns the TaskInfo."""
  from input_pipeline.sources import import_builders  # pylint: disable=g-import-not-at-top
  ownership.claim(out_dir, 'task')
  return import_builders.import_task_split(
      import_builders.SnliVeTask, out_dir, split, overwrite=overwrite, images=image_sources,
      vocab_dir=vocab_dir, jsonl=jsonl, phrases=phrases, normalize_ids=normalize_ids,
      builtin_phrases=builtin_phrases, on_error=on_error, max_error_fraction=max_error_fraction)


def _define(v: flags.FlagValues) -> None:
  flags.DEFINE_string('jsonl', None, 'SNLI-VE jsonl file (snli_ve_{split}.jsonl) of the split', flag_values=v)
  flags.DEFINE_string('phrases', None, '{split}_sgs.json ([[tuples, pairID]])', flag_values=v)
  flags.DEFINE_bool('builtin_phrases', True, 'phrases from the built-in extractor',
                    flag_values=v)


def _import(a: flags.FlagValues) -> examples_lib.TaskInfo:
  return import_snli_ve(jsonl=a.jsonl, phrases=a.phrases, builtin_phrases=a.builtin_phrases,
                        **cli.importer_args(a))


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run_importer('python -m input_pipeline.tasks.snli_ve', argv, _define, _import,
                          required=('jsonl',))


if __name__ == '__main__':
  sys.exit(main())
