"""Imports VinVL features, captions and phrases as one stored split (input_pipeline/storage.py).

  python -m input_pipeline.import_vinvl --features=coco/features.tsv \\
      --predictions=coco/predictions.tsv --captions=dataset_coco.json \\
      --phrases=coco_full_sg.pt --phrase_format=coco --out_dir=data/coco_vinvl --split=train

`--features` may also be a tools/img_feat_extract.py file (then no --predictions). Captions are
Karpathy JSON (`{"images": [{"cocoid"/"imgid"/"filename", "split", "sentences": [{"raw"}]}]}`,
filtered by split: `--split=train` keeps Karpathy's train and restval), a
`[{"image_id", "caption"(, "phrases")}]` list, COCO's `{"annotations": [...]}`, or
`{image_id: [caption, ...]}`. Phrases of caption k of an image come from, in this order: the
caption file's own "phrases", the `--phrases` file (phrase_files.py), the built-in extractor
(`--builtin_phrases`), else none.

Error policy: with on_error='skip' (default) an image with any bad row is left out and reported
(file, 1-based line, kind); the import fails when more than `max_error_fraction` (default 1%) of
the captioned images were left out, or none is left. With 'raise' the first problem fails it.
storage.write_dataset makes a split visible only once complete, so a failed import leaves no
complete-looking split. The report is printed and written beside the split, to
`{out_dir}/{split}_import_report.json` (or `..._import_report.failed.json` when it failed).
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from input_pipeline import phrase_extractor
from input_pipeline import phrase_files
from input_pipeline import storage
from input_pipeline import vinvl
from input_pipeline.vinvl import ImportReport, RowError, VinvlImportError, VinvlOptions

CAPTION_ID_FIELDS = ('auto', 'cocoid', 'imgid', 'filename')


def _karpathy_id(image: dict, id_field: str) -> Any:
  if id_field == 'auto':
    id_field = 'cocoid' if 'cocoid' in image else 'filename'
  if id_field not in image:
    raise RowError('bad_caption', f'no "{id_field}"')
  if id_field == 'filename':
    return os.path.splitext(str(image['filename']))[0]
  return image[id_field]


def _read_karpathy(images: Any, path: str, splits: Optional[set], id_field: str,
                   options: VinvlOptions, report: ImportReport) -> dict[str, list]:
  if not isinstance(images, list):
    raise VinvlImportError(f'{path}: "images" must be a list')
  captions = {}
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
      if image_id in captions:
        raise RowError('duplicate_id', f'second entry for image {image_id!r}; the first is kept')
    except RowError as e:
      report.stats['caption_images'] += 1
      report.problem(e.kind, where, e.detail)
      continue
    captions[image_id] = [r.strip() for r in raws]
  return captions


def _read_caption_list(entries: list, path: str, options: VinvlOptions, report: ImportReport,
                       embedded: phrase_files.PhraseTable) -> dict[str, list]:
  captions = {}
  for i, entry in enumerate(entries):
    where = f'{path}: entry {i}'
    try:
      if (not isinstance(entry, dict) or isinstance(entry.get('image_id'), (bool, type(None)))
          or not isinstance(entry.get('caption'), str) or not entry['caption'].strip()):
        raise RowError('bad_caption', 'expected {"image_id": ..., "caption": "non-empty str"}')
      image_id = options.image_id(entry['image_id'])
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
    image_captions = captions.setdefault(image_id, [])
    if phrases is not None:
      embedded[(image_id, len(image_captions))] = phrases
    image_captions.append(entry['caption'].strip())
  return captions


def _read_caption_dict(data: dict, path: str, options: VinvlOptions,
                       report: ImportReport) -> dict[str, list]:
  captions = {}
  for raw_id, value in data.items():
    where = f'{path}: image {raw_id!r}'
    try:
      image_id = options.image_id(raw_id)
      if isinstance(value, str):
        try:
          value = json.loads(value)
        except json.JSONDecodeError as e:
          raise RowError('bad_caption', f'not a JSON list of captions ({e})') from None
      if (not isinstance(value, list) or not value
          or not all(isinstance(c, str) and c.strip() for c in value)):
        raise RowError('bad_caption', 'expected a non-empty list of caption strings')
      if image_id in captions:
        raise RowError('duplicate_id', f'{raw_id!r} normalises to the id of an earlier entry')
    except RowError as e:
      report.stats['caption_images'] += 1
      report.problem(e.kind, where, e.detail)
      continue
    captions[image_id] = [c.strip() for c in value]
  return captions


def load_captions(path: str, report: ImportReport, options: VinvlOptions, *,
                  karpathy_splits: Optional[Iterable[str]] = None, id_field: str = 'auto',
                  ) -> tuple[dict[str, list], phrase_files.PhraseTable]:
  """({image id: [caption]} in file order, phrases stored in the caption file).

  `karpathy_splits` keeps only the Karpathy images of those splits (None: all); the other
  formats have no split field and keep everything. `id_field` picks the Karpathy image id
  ('auto': cocoid when present, else the file name without extension). Bad entries are
  reported; each counts as one captioned image that was dropped.
  """
  path = os.fspath(path)
  if id_field not in CAPTION_ID_FIELDS:
    raise ValueError(f'caption id field must be one of {CAPTION_ID_FIELDS}, got {id_field!r}')
  try:
    with open(path, 'rb') as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise VinvlImportError(f'{path}: captions are not valid JSON ({e})') from None
  embedded = {}
  if isinstance(data, dict) and 'images' in data:
    splits = None if karpathy_splits is None else set(karpathy_splits)
    captions = _read_karpathy(data['images'], path, splits, id_field, options, report)
  elif isinstance(data, dict) and isinstance(data.get('annotations'), list):
    captions = _read_caption_list(data['annotations'], path, options, report, embedded)
  elif isinstance(data, list):
    captions = _read_caption_list(data, path, options, report, embedded)
  elif isinstance(data, dict):
    captions = _read_caption_dict(data, path, options, report)
  else:
    raise VinvlImportError(f'{path}: unknown caption format ({type(data).__name__})')
  report.stats['caption_images'] += len(captions)
  report.stats['captions'] += sum(len(c) for c in captions.values())
  return captions, embedded


def load_phrase_table(path: str, fmt: str, report: ImportReport,
                      options: VinvlOptions) -> phrase_files.PhraseTable:
  """A phrase file (phrase_files.py) with its image ids keyed like the captions."""
  table = {}
  for (raw_id, k), phrases in phrase_files.load_phrase_file(path, fmt).items():
    try:
      key = (options.image_id(raw_id), k)
      if key in table:
        raise RowError('duplicate_id', f'{raw_id!r} caption {k} normalises to an earlier key')
    except RowError as e:
      report.problem(e.kind, f'{path}: image {raw_id!r}', e.detail)
      continue
    table[key] = phrases
  return table


def make_phrases_for(embedded: phrase_files.PhraseTable,
                     table: Optional[phrase_files.PhraseTable], table_path: Optional[str],
                     extractor: Optional[Callable[[str], list]],
                     report: ImportReport) -> vinvl.PhrasesFor:
  """phrases_for(image_id, k, caption): caption file, then phrase file, then extractor."""
  def phrases_for(image_id: str, k: int, caption: str) -> list:
    if (image_id, k) in embedded:
      return embedded[(image_id, k)]
    if table is not None:
      if (image_id, k) in table:
        return table[(image_id, k)]
      report.warning('missing_phrases', table_path, f'no phrases for image {image_id!r} '
                     f'caption {k}')
    if extractor is not None:
      where = f'builtin phrases of image {image_id!r} caption {k}'
      return [phrase_files.normalize_tuple(p, where) for p in extractor(caption)]
    return []
  return phrases_for


def detect_source_format(path: str) -> str:
  """'vinvl' for features.tsv (3 fields a row), 'extract' for img_feat_extract.py output."""
  for line_no, line in vinvl.TsvFile(path).rows():
    fields = line.split(b'\t')
    if len(fields) == 3:
      return 'vinvl'
    if len(fields) == 2 and fields[1].lstrip().startswith(b'{'):
      return 'extract'
    raise VinvlImportError(f'{path}:{line_no}: neither a features.tsv nor an '
                           'img_feat_extract.py row')
  raise VinvlImportError(f'{path}: no rows')


def _checked(records: Iterator[dict], report: ImportReport,
             max_error_fraction: float) -> Iterator[dict]:
  """`records`, then raises (so that nothing is committed) when too many images were lost."""
  yield from records
  if not report.stats['records']:
    raise VinvlImportError('no image records: no captioned image has valid features')
  if report.dropped_fraction > max_error_fraction:
    raise VinvlImportError(f'{report.dropped_fraction:.2%} of the captioned images were left out, '
                           f'more than max_error_fraction={max_error_fraction:.2%}')


def import_vinvl(*, features: str, captions: str, out_dir: str, split: str,
                 predictions: Optional[str] = None, phrases: Optional[str] = None,
                 phrase_format: str = 'auto', builtin_phrases: bool = False,
                 karpathy_splits: Optional[Sequence[str]] = None, caption_id_field: str = 'auto',
                 on_error: str = 'skip', max_error_fraction: float = 0.01,
                 max_messages: int = 20, overwrite: bool = False,
                 options: VinvlOptions = VinvlOptions()) -> ImportReport:
  """Imports one split into `out_dir/split` and returns its report.

  On failure the exception carries the report summary as a note, and the report is written to
  `{split}_import_report.failed.json` so that `{split}_import_report.json` always describes the
  split that is in place. karpathy_splits: Karpathy splits to keep; None keeps `split`, plus
  'restval' for 'train'.
  """
  if os.path.exists(os.path.join(out_dir, split)) and not overwrite:
    raise FileExistsError(f'{os.path.join(out_dir, split)}: split already written (pass '
                          'overwrite=True to replace it)')
  report = ImportReport(on_error=on_error, max_messages=max_messages)
  inputs = {'features': features, 'predictions': predictions, 'captions': captions,
            'phrases': phrases}
  try:
    source_format = detect_source_format(features)
    if (source_format == 'vinvl') != (predictions is not None):
      raise VinvlImportError(f'{features} is a {source_format} file: predictions are '
                             f'{"needed" if source_format == "vinvl" else "not used"}')
    if karpathy_splits is None:
      karpathy_splits = [split] + (['restval'] if split == 'train' else [])
    image_captions, embedded = load_captions(captions, report, options,
                                             karpathy_splits=karpathy_splits,
                                             id_field=caption_id_field)
    table = load_phrase_table(phrases, phrase_format, report, options) if phrases else None
    extractor = phrase_extractor.extract_phrases if builtin_phrases else None
    phrases_for = make_phrases_for(embedded, table, phrases, extractor, report)
    if source_format == 'vinvl':
      records = vinvl.iter_vinvl_records(features, predictions, image_captions, phrases_for,
                                         report, options)
    else:
      records = vinvl.iter_extract_records(features, image_captions, phrases_for, report,
                                           options)
    storage.write_dataset(_checked(records, report, max_error_fraction), out_dir, split,
                          metadata={'source': 'vinvl'}, overwrite=overwrite)
  except BaseException as e:
    path = _write_report(report, out_dir, split, f'{type(e).__name__}: {e}', inputs, options)
    e.add_note(f'import report ({path}):\n{report.summary()}')
    raise
  _write_report(report, out_dir, split, None, inputs, options)
  return report


def report_path(out_dir: str, split: str, failed: bool = False) -> str:
  """Where the import report of `split` is written, beside the split's folder."""
  suffix = '.failed' if failed else ''
  return os.path.join(os.fspath(out_dir), f'{split}_import_report{suffix}.json')


def _write_report(report: ImportReport, out_dir: str, split: str, error: Optional[str],
                  inputs: dict, options: VinvlOptions) -> str:
  """Writes the report JSON atomically; a success removes the report of an earlier failure."""
  path = report_path(out_dir, split, failed=error is not None)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  content = {'split': split, 'status': 'failed' if error else 'complete', 'error': error,
             'inputs': inputs, 'options': dataclasses.asdict(options), **report.to_dict()}
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(content, f, indent=2)
  os.replace(path + '.tmp', path)
  if error is None and os.path.exists(report_path(out_dir, split, failed=True)):
    os.remove(report_path(out_dir, split, failed=True))
  return path


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m input_pipeline.import_vinvl',
                                   description=__doc__.split('\n', 1)[0])
  parser.add_argument('--features', required=True,
                      help='features.tsv, or a tools/img_feat_extract.py predictions.tsv')
  parser.add_argument('--predictions', help='predictions.tsv (needed with a features.tsv)')
  parser.add_argument('--captions', required=True, help='caption JSON (see the module doc)')
  parser.add_argument('--phrases', help='phrase file (input_pipeline/phrase_files.py)')
  parser.add_argument('--phrase_format', default='auto',
                      choices=('auto',) + phrase_files.FORMATS)
  parser.add_argument('--builtin_phrases', action='store_true',
                      help='extract phrases of captions that have none from another source')
  parser.add_argument('--out_dir', required=True)
  parser.add_argument('--split', required=True)
  parser.add_argument('--karpathy_splits', default=None,
                      help="comma-separated Karpathy splits to keep (default: --split, "
                      "plus restval for train)")
  parser.add_argument('--caption_id_field', default='auto', choices=CAPTION_ID_FIELDS)
  parser.add_argument('--on_error', default='skip', choices=('skip', 'raise'))
  parser.add_argument('--max_error_fraction', type=float, default=0.01)
  parser.add_argument('--max_messages', type=int, default=20)
  parser.add_argument('--feature_dim', type=int, default=VinvlOptions.feature_dim)
  parser.add_argument('--prefer_gt_objects', action='store_true',
                      help='tags from gt_objects when aligned with the regions (use_gtlabels=1)')
  parser.add_argument('--normalize_ids', action='store_true',
                      help="key images by str(int(id.split('_')[-1]))")
  parser.add_argument('--verify_boxes', action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument('--box_atol', type=float, default=VinvlOptions.box_atol)
  parser.add_argument('--overwrite', action='store_true', help='replace an existing split')
  parser.add_argument('--vocab', default=None,
                      help='tokenizer vocabulary (BERT vocab.txt or a SentencePiece .model) to '
                           'store beside the data; required once per dataset directory')
  parser.add_argument('--id2phrase', default=None,
                      help="concept vocabulary in the authors' id2phrase JSON format; without it "
                           'one is built from the imported phrases (see --min_concept_count)')
  parser.add_argument('--min_concept_count', type=int, default=50,
                      help='keep phrase tuples seen in at least this many captions (authors: 50)')
  parser.add_argument('--use_index', action=argparse.BooleanOptionalAction, default=True,
                      help='seek with .lineidx and imageid2idx.json when both exist')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  options = VinvlOptions(feature_dim=args.feature_dim, prefer_gt_objects=args.prefer_gt_objects,
                         verify_boxes=args.verify_boxes, box_atol=args.box_atol,
                         use_index=args.use_index, normalize_ids=args.normalize_ids)
  splits = args.karpathy_splits.split(',') if args.karpathy_splits else None
  try:
    report = import_vinvl(
        features=args.features, predictions=args.predictions, captions=args.captions,
        phrases=args.phrases, phrase_format=args.phrase_format,
        builtin_phrases=args.builtin_phrases, out_dir=args.out_dir, split=args.split,
        karpathy_splits=splits, caption_id_field=args.caption_id_field,
        on_error=args.on_error, max_error_fraction=args.max_error_fraction,
        max_messages=args.max_messages, overwrite=args.overwrite, options=options)
  except (VinvlImportError, phrase_files.PhraseFileError, FileExistsError) as e:
    print(f'import failed: {e}', file=sys.stderr)
    print('\n'.join(getattr(e, '__notes__', [])), file=sys.stderr)
    return 1
  print(report.summary())
  print(f'report: {report_path(args.out_dir, args.split)}')
  if args.vocab:
    write_vocabularies(args.out_dir, args.vocab, args.id2phrase, args.split,
                       args.min_concept_count)
  return 0


def write_vocabularies(out_dir: str, vocab: str, id2phrase: Optional[str] = None,
                       split: str = 'train', min_concept_count: int = 50) -> None:
  """Stores the tokenizer and concept vocabulary beside the data (what training reads).

  With `id2phrase` (e.g. the authors' `id2phrase_new.json`) the concepts are taken as they are,
  so the authors' checkpoints keep their embedding rows; otherwise they are built from the
  phrases of `split` (tuples in at least `min_concept_count` captions).
  """
  from input_pipeline import concepts  # pylint: disable=g-import-not-at-top
  from input_pipeline import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.load_tokenizer(vocab)
  if id2phrase:
    concept_vocab = concepts.ConceptVocab.load(id2phrase, tokenizer.vocab_size)
  else:
    sentences = (
        [tuple(w.decode() for w in phrase) for phrase in caption]
        for record in storage.read_dataset(out_dir, split).as_numpy_iterator()
        for caption in record['phrases'])
    concept_vocab = concepts.ConceptVocab.build(sentences, tokenizer, min_concept_count)
  storage.save_vocabularies(out_dir, vocab, concept_vocab)
  print(f'vocabularies: {tokenizer.vocab_size} words, {len(concept_vocab)} concepts '
        f'({concept_vocab.num_rows} embedding rows) in {out_dir}')


if __name__ == '__main__':
  sys.exit(main())
