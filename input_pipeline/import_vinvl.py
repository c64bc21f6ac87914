"""Imports VinVL features, captions and phrases as one stored split (input_pipeline/storage.py).

  python -m input_pipeline.import_vinvl --features=coco/features.tsv \\
      --predictions=coco/predictions.tsv --captions=dataset_coco.json \\
      --phrases=coco_full_sg.pt --phrase_format=coco --out_dir=data/coco_vinvl --split=train

`--features` may also be a tools/img_feat_extract.py file, a scene_graph_benchmark
predictions.tsv with per-object "feature" (then no --predictions), or Oscar's Flickr
`{split}_img_frcnn_feats.pt` (--predictions: its optional `{split}_{type}_labels.pt`); see
vinvl.py. Caption formats (captions.py): Karpathy's dataset_*.json (`--split=train` keeps
Karpathy's train and restval), COCO's official captions_*.json, `[{"image_id", "caption"|"text"
(, "phrases")}]` lists, `{image_id: [caption]}` JSON or the authors' `{split}_captions.pt`.
Phrases of caption k of an image come from, in this order: the caption file's own "phrases",
the `--phrases` file (phrase_files.py; a `processed_*.json` is joined by caption text, the
index-keyed formats by k, the caption's index among all entries of its image in the caption
file), the built-in extractor (`--builtin_phrases`), else none. An index-keyed phrase file that
lists another number of captions for an image than the caption file is a
`phrase_count_mismatch` (the image is left out: its phrases cannot be aligned); a phrase file
that matches no captioned image fails the import.

Error policy: with on_error='skip' (default) an image with any bad row is left out and reported
(file, 1-based line, kind); the import fails when more than `max_error_fraction` (default 1%) of
the captioned images were left out, or none is left. With 'raise' the first problem fails it.
The split is written by the `vinvl_features` TFDS builder (input_pipeline/sources/
import_builders.py; `tfds build` builds every split of a manual folder with it) into
`{out_dir}/.tfds/` and linked as `{out_dir}/{split}` only once complete, so a failed import
leaves no complete-looking split. The report is printed and written beside the split, to
`{out_dir}/{split}_import_report.json` (or `..._import_report.failed.json` when it failed).
"""

import dataclasses
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from absl import flags

from input_pipeline import captions as captions_lib
from input_pipeline import cli
from input_pipeline import concepts
from input_pipeline import jsonio
from input_pipeline import ownership
from input_pipeline import phrase_extractor
from input_pipeline import phrase_files
from input_pipeline import storage
from input_pipeline import tokenizers
from input_pipeline import vinvl
from input_pipeline.import_report import ImportReport
from input_pipeline.vinvl_rows import RowError, VinvlImportError, VinvlOptions

SOURCE_FORMATS = ('vinvl', 'extract', 'sgb', 'frcnn_pt')


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


def align_phrase_table(caption_set: captions_lib.CaptionSet, table: phrase_files.PhraseTable,
                       path: str, report: ImportReport) -> None:
  """Fails when `table` matches no captioned image; drops (as phrase_count_mismatch) each image
  whose index-keyed entries are not exactly one per caption entry of the caption file."""
  by_image = {}
  for image_id, key in table:
    by_image.setdefault(image_id, []).append(key)
  matched = [i for i in caption_set.captions if i in by_image]
  if not matched:
    raise VinvlImportError(
        f'{path}: no phrase entry matches a captioned image (phrase ids like '
        f'{sorted(by_image)[:3]}, caption ids like {sorted(caption_set.captions)[:3]}); check '
        '--normalize_ids and that both files describe the same images')
  for image_id in matched:
    indices = sorted(k for k in by_image[image_id] if isinstance(k, int))
    expected = caption_set.source_counts[image_id]
    if indices and indices != list(range(expected)):
      report.problem('phrase_count_mismatch', f'{path}: image {image_id!r}',
                     f'phrases for captions {indices[:8]} but the caption file has {expected} '
                     'caption entries for it; the phrases cannot be aligned')
      del caption_set.captions[image_id]


def make_phrases_for(caption_set: Optional[captions_lib.CaptionSet],
                     table: Optional[phrase_files.PhraseTable], table_path: Optional[str],
                     extractor: Optional[Callable[[str], list]],
                     report: ImportReport) -> vinvl.PhrasesFor:
  """phrases_for(image_id, k, caption) of kept caption k: caption file, phrase file (by text,
  then by the caption's source index), extractor."""
  def phrases_for(image_id: str, k: int, caption: str) -> list:
    source_k = caption_set.keys[image_id][k] if caption_set else k
    if caption_set and (image_id, source_k) in caption_set.embedded:
      return caption_set.embedded[(image_id, source_k)]
    if table is not None:
      for key in ((image_id, phrase_files.text_key(caption)), (image_id, source_k)):
        if key in table:
          return table[key]
      report.warning('missing_phrases', table_path, f'no phrases for image {image_id!r} '
                     f'caption {source_k}')
    if extractor is not None:
      where = f'builtin phrases of image {image_id!r} caption {source_k}'
      return [phrase_files.normalize_tuple(p, where) for p in extractor(caption)]
    return []
  return phrases_for


def detect_source_format(path: str) -> str:
  """The feature source format (vinvl.py) of `path`, or VinvlImportError naming what it saw."""
  if os.fspath(path).endswith('.pt'):
    return 'frcnn_pt'
  for line_no, line in vinvl.TsvFile(path).rows():
    fields = line.split(b'\t')
    if len(fields) == 3:
      return 'vinvl'
    if len(fields) == 2 and fields[1].lstrip().startswith(b'{'):
      try:
        data = jsonio.loads(fields[1])
      except ValueError as e:
        raise VinvlImportError(f'{path}:{line_no}: the JSON field is not valid ({e})') from None
      if isinstance(data, dict) and 'feature' in data:
        return 'extract'
      objects = data.get('objects') if isinstance(data, dict) else None
      if isinstance(objects, list) and objects and all(
          isinstance(o, dict) and 'feature' in o for o in objects):
        return 'sgb'
      seen = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
      raise VinvlImportError(
          f'{path}:{line_no}: a JSON row with keys {seen}; expected img_feat_extract.py\'s '
          '{"feature", "predictions"} or scene_graph_benchmark '
          'objects each with a "feature" (a predictions.tsv without features goes to '
          '--predictions, beside a features.tsv)')
    raise VinvlImportError(f'{path}:{line_no}: {len(fields)} tab-separated fields; expected a '
                           'features.tsv row (3) or a JSON predictions row (2)')
  raise VinvlImportError(f'{path}: no rows')


def checked(records: Iterator[dict], report: ImportReport,
            max_error_fraction: float) -> Iterator[dict]:
  """`records`, then raises (so that nothing is committed) when too many images were lost."""
  yield from records
  if not report.stats['records']:
    raise VinvlImportError('no image records: no captioned image has valid features')
  if report.lost_fraction > max_error_fraction:
    raise VinvlImportError(f'{report.lost_fraction:.2%} of the captioned images were left out, '
                           f'more than max_error_fraction={max_error_fraction:.2%}')


def iter_records(inputs: dict, split: str, report: ImportReport, options: VinvlOptions, *,
                 phrase_format: str = 'auto', builtin_phrases: bool = False,
                 karpathy_splits: Optional[Sequence[str]] = None,
                 caption_id_field: str = 'auto') -> Iterator[dict]:
  """The image records (unvalidated) of one split's `inputs` {'features', 'predictions',
  'captions', 'phrases'} (module docstring), problems going to `report`."""
  features, predictions, phrases = inputs['features'], inputs['predictions'], inputs['phrases']
  source_format = detect_source_format(features)
  if source_format in ('extract', 'sgb') and predictions is not None:
    raise VinvlImportError(f'{features} is a {source_format} file: predictions are not used')
  if source_format == 'vinvl' and predictions is None:
    raise VinvlImportError(f'{features} is a features.tsv: --predictions is needed')
  if karpathy_splits is None:
    karpathy_splits = [split] + (['restval'] if split == 'train' else [])
  caption_set = captions_lib.load_captions(inputs['captions'], report, options,
                                           karpathy_splits=karpathy_splits,
                                           id_field=caption_id_field)
  table = load_phrase_table(phrases, phrase_format, report, options) if phrases else None
  if table is not None:
    align_phrase_table(caption_set, table, phrases, report)
  extractor = phrase_extractor.extract_phrases if builtin_phrases else None
  phrases_for = make_phrases_for(caption_set, table, phrases, extractor, report)
  kept = caption_set.captions
  if source_format == 'vinvl':
    return vinvl.iter_vinvl_records(features, predictions, kept, phrases_for, report, options)
  if source_format == 'extract':
    return vinvl.iter_extract_records(features, kept, phrases_for, report, options)
  if source_format == 'sgb':
    return vinvl.iter_sgb_records(features, kept, phrases_for, report, options)
  return vinvl.iter_pt_records(features, predictions, kept, phrases_for, report, options)


def import_vinvl(*, features: str, captions: str, out_dir: str, split: str,
                 predictions: Optional[str] = None, phrases: Optional[str] = None,
                 phrase_format: str = 'auto', builtin_phrases: bool = False,
                 karpathy_splits: Optional[Sequence[str]] = None, caption_id_field: str = 'auto',
                 on_error: str = 'skip', max_error_fraction: float = 0.01,
                 max_messages: int = 20, overwrite: bool = False,
                 options: VinvlOptions = VinvlOptions()) -> ImportReport:
  """Imports one split into `out_dir/split` through the `vinvl_features` builder; returns its
  report.

  The builder (sources/import_builders.py) writes the split into `out_dir/.tfds/` and
  sources/layout.py links it as `out_dir/split` (storage.py layout). On failure the exception
  carries the report summary as a note, and the report is written to
  `{split}_import_report.failed.json` so that `{split}_import_report.json` always describes the
  split that is in place. karpathy_splits: Karpathy splits to keep; None keeps `split`, plus
  'restval' for 'train'. `out_dir` must be new, empty or an earlier VinVL import.
  """
  from input_pipeline.sources import import_builders  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(out_dir, split)) and not overwrite:
    raise FileExistsError(f'{os.path.join(out_dir, split)}: split already written (pass '
                          'overwrite=True to replace it)')
  ownership.claim(out_dir, 'vinvl')
  return import_builders.import_vinvl_split(
      out_dir, split, features=features, predictions=predictions, captions=captions,
      phrases=phrases, phrase_format=phrase_format, builtin_phrases=builtin_phrases,
      karpathy_splits=karpathy_splits, caption_id_field=caption_id_field, on_error=on_error,
      max_error_fraction=max_error_fraction, max_messages=max_messages,
      **dataclasses.asdict(options))


def report_path(out_dir: str, split: str, failed: bool = False) -> str:
  """Where the import report of `split` is written, beside the split's folder."""
  suffix = '.failed' if failed else ''
  return os.path.join(os.fspath(out_dir), f'{split}_import_report{suffix}.json')


def write_report(report: ImportReport, out_dir: str, split: str, error: Optional[str],
                 inputs: dict, options: VinvlOptions) -> str:
  """Writes the report JSON atomically; a success removes the report of an earlier failure."""
  path = report_path(out_dir, split, failed=error is not None)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  content = {'split': split, 'status': 'failed' if error else 'complete', 'error': error,
             'inputs': inputs, 'options': dataclasses.asdict(options), **report.to_dict()}
  jsonio.write_json_atomically(content, path, indent=2)
  if error is None and os.path.exists(report_path(out_dir, split, failed=True)):
    os.remove(report_path(out_dir, split, failed=True))
  return path


def write_vocabularies(out_dir: str, vocab: str, id2phrase: Optional[str] = None,
                       split: str = 'train', min_concept_count: int = 50) -> None:
  """Stores the tokenizer and concept vocabulary beside the data (what training reads).

  With `id2phrase` (e.g. the authors' `id2phrase_new.json`) the concepts are taken as they are,
  so the authors' checkpoints keep their embedding rows; otherwise they are built from the
  phrases of `split` (tuples in at least `min_concept_count` captions).
  """
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


def _define(v: flags.FlagValues) -> None:
  s, b, f, i = flags.DEFINE_string, flags.DEFINE_bool, flags.DEFINE_float, flags.DEFINE_integer
  s('features', None, 'features.tsv, an img_feat_extract.py or scene_graph_benchmark '
    'predictions.tsv with features, or a Flickr *_img_frcnn_feats.pt', flag_values=v)
  s('predictions', None, 'predictions.tsv (with a features.tsv), or labels .pt (with a .pt)',
    flag_values=v)
  s('captions', None, 'caption file (input_pipeline/captions.py)', flag_values=v)
  s('phrases', None, 'phrase file (input_pipeline/phrase_files.py)', flag_values=v)
  flags.DEFINE_enum('phrase_format', 'auto', ('auto',) + phrase_files.FORMATS, 'format of --phrases (auto: from the file)',
                    flag_values=v)
  b('builtin_phrases', False, 'extract phrases of captions that have none from another source',
    flag_values=v)
  s('out_dir', None, 'dataset directory to write (storage.py layout)', flag_values=v)
  s('split', None, 'name of the split to write', flag_values=v)
  flags.DEFINE_list('karpathy_splits', None, 'Karpathy splits to keep (default: --split, plus '
                    'restval for train)', flag_values=v)
  flags.DEFINE_enum('caption_id_field', 'auto', captions_lib.CAPTION_ID_FIELDS,
                    'Karpathy image id field', flag_values=v)
  flags.DEFINE_enum('on_error', 'skip', ['skip', 'raise'], 'skip bad entries or stop',
                    flag_values=v)
  f('max_error_fraction', 0.01, 'fail when more captioned images are lost', flag_values=v)
  i('max_messages', 20, 'messages kept in the report', flag_values=v)
  i('feature_dim', VinvlOptions.feature_dim, 'stored region feature width', flag_values=v)
  b('prefer_gt_objects', False, 'tags from gt_objects when aligned (use_gtlabels=1)',
    flag_values=v)
  b('normalize_ids', False, "key images by str(int(id.split('_')[-1]))", flag_values=v)
  b('verify_boxes', True, 'check stored box dims against the rects', flag_values=v)
  f('box_atol', VinvlOptions.box_atol, 'box check tolerance', flag_values=v)
  b('overwrite', False, 'replace an existing split', flag_values=v)
  s('vocab', None, 'tokenizer (vocab.txt or .model) to store beside the data', flag_values=v)
  s('id2phrase', None, "concept vocabulary (the authors' id2phrase JSON); default: built from "
    'the imported phrases', flag_values=v)
  i('min_concept_count', 50, 'keep phrase tuples of at least this many captions (authors: 50)',
    flag_values=v)
  b('use_index', True, 'seek with .lineidx and imageid2idx.json when both exist', flag_values=v)


def _run(a: flags.FlagValues) -> int:
  options = VinvlOptions(feature_dim=a.feature_dim, prefer_gt_objects=a.prefer_gt_objects,
                         verify_boxes=a.verify_boxes, box_atol=a.box_atol,
                         use_index=a.use_index, normalize_ids=a.normalize_ids)
  report = import_vinvl(
      features=a.features, predictions=a.predictions, captions=a.captions, phrases=a.phrases,
      phrase_format=a.phrase_format, builtin_phrases=a.builtin_phrases, out_dir=a.out_dir,
      split=a.split, karpathy_splits=a.karpathy_splits, caption_id_field=a.caption_id_field,
      on_error=a.on_error, max_error_fraction=a.max_error_fraction,
      max_messages=a.max_messages, overwrite=a.overwrite, options=options)
  print(report.summary())
  print(f'report: {report_path(a.out_dir, a.split)}')
  if a.vocab:
    write_vocabularies(a.out_dir, a.vocab, a.id2phrase, a.split, a.min_concept_count)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  return cli.run('python -m input_pipeline.import_vinvl', argv, _define, _run,
                 required=('features', 'captions', 'out_dir', 'split'))


if __name__ == '__main__':
  sys.exit(main())
