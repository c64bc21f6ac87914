r"""TFDS builders of the VinVL import and of the VQA, SNLI-VE and RefCOCO task imports.

  tfds build --imports=input_pipeline.sources.import_builders --manual_dir=/data/vinvl_coco \
      --data_dir=/data/tfds vinvl_features
  tfds build --imports=input_pipeline.sources.import_builders --manual_dir=/data/vqa \
      --data_dir=/data/tfds 'vqa_task/v2/images=/data/coco_mvp/train+/data/coco_mvp/val'
  tfds.data_source('vqa_task/v2', split='val', data_dir='/data/tfds')   # random access
  tfds.load('vqa_task/v2', split='val', data_dir='/data/tfds')          # tf.data
  layout.link_task(builder.data_dir, '/data/vqa_mvp', 'val')            # the task layout

  vinvl_features  VinVL / Oscar region features + captions + phrases -> image records
                  (input_pipeline/import_vinvl.py); one split per folder of the manual folder.
  vqa_task        VQA v2 (config v2) or VinVL's qla files (config vinvl_qla) (tasks/vqa.py)
  snli_ve_task    SNLI-VE jsonl (tasks/snli_ve.py)
  refcoco_task    RefCOCO / RefCOCO+ / RefCOCOg refs + instances.json (tasks/refcoco.py)

Every option of an importer is a builder kwarg of the same name (`tfds build` passes them in the
dataset name, front_end.py; a list is '+'-joined). Instead of a manual folder, one split's files
may be given as kwargs, with split=NAME (features=, captions=, ...; questions= or qla=; jsonl=;
refs=, instances=, ref_split=): the import commands do that (`import_vinvl_split`,
`import_task_split`), building the split into OUT_DIR/.tfds/ (array_record only: what the
pipeline reads) and laying it out in OUT_DIR (layout.py) as storage.py and tasks/examples.py
describe. Each split's import report goes to REPORT_DIR/{split}_import_report.json (report_dir=,
default `<data_dir>.reports`; the import commands: OUT_DIR) and into the built metadata.

A task builder reads its images from image-record split folders (images=DIR/SPLIT+DIR/SPLIT,
storage.py layout, e.g. a VinVL import; searched in order). Its records are those image records,
in order of first use, carrying the task examples of the image: `examples` (one JSON object
each: the fields of tasks/examples.py but image_index) and `example_positions` (their order in
the split). The metadata holds the task, the answers (VQA), the vocabulary folder and the input
file of every split.
"""

import dataclasses
import json
import os
import re
import shutil
import uuid
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import captions as captions_lib
from input_pipeline import import_vinvl
from input_pipeline import phrase_files
from input_pipeline import storage
from input_pipeline.import_report import ImportReport
from input_pipeline.sources import builders
from input_pipeline.sources import front_end
from input_pipeline.sources import layout
from input_pipeline.tasks import examples as examples_lib
from input_pipeline.tasks import importing
from input_pipeline.tasks import refcoco
from input_pipeline.tasks import snli_ve
from input_pipeline.tasks import vqa
from input_pipeline.vinvl_rows import VinvlImportError, VinvlOptions, new_report

BUILDS = '.tfds'  # OUT_DIR/.tfds/<split>.<id>/: the build an import command laid out
_TFDS_KWARGS = ('data_dir', 'config', 'version', 'file_format')


# ----------------------------------------------------------------------------- kwarg checks

def _check_names(builder, kwargs: dict, accepted: Sequence[str]) -> None:
  unknown = sorted(set(kwargs) - set(_TFDS_KWARGS))
  if unknown:
    raise front_end.BuilderKwargError(
        f'{builder}: unknown builder kwarg {unknown[0]}={kwargs[unknown[0]]!r}; accepted: '
        f'{", ".join(tuple(accepted) + _TFDS_KWARGS)}.')


def _file(builder, kwarg, value) -> Optional[str]:
  return front_end.path_kwarg(builder, kwarg, value, folder=False)


def _bool(builder, kwarg, value, optional: bool = False) -> Optional[bool]:
  if not isinstance(value, bool) and not (optional and value is None):
    raise front_end.kwarg_error(builder, kwarg, value, 'expected True or False')
  return value


def _choice(builder, kwarg, value, choices: Sequence[str]) -> str:
  if value not in choices:
    raise front_end.kwarg_error(builder, kwarg, value, f'expected one of {list(choices)}')
  return value


def _number(builder, kwarg, value, low: float, high: Optional[float] = None,
            integer: bool = False):
  kinds = int if integer else (int, float)
  if (isinstance(value, bool) or not isinstance(value, kinds) or value < low
      or (high is not None and value > high)):
    what = 'an integer' if integer else 'a number'
    raise front_end.kwarg_error(builder, kwarg, value, f'expected {what} >= {low}' + (
        f' and <= {high}' if high is not None else ''))
  return value


def _split_name(builder, kwarg, value) -> Optional[str]:
  if value is not None and (not isinstance(value, str) or not re.fullmatch(r'\w+', value)):
    raise front_end.kwarg_error(builder, kwarg, value, 'expected a split name (letters, '
                                'digits, _)')
  return value


def _names(builder, kwarg, value) -> Optional[list[str]]:
  """None, a list of names, or `tfds build`'s 'a+b'."""
  if value is None:
    return None
  names = value.split('+') if isinstance(value, str) else value
  if not isinstance(names, (list, tuple)) or not names or not all(
      isinstance(n, str) and n for n in names):
    raise front_end.kwarg_error(builder, kwarg, value, "expected names, '+'-joined")
  return list(names)


def image_sources(builder: str, value: Any) -> Optional[list[tuple[str, str]]]:
  """images= -> [(DIR, SPLIT)]: (DIR, SPLIT) pairs or split folders DIR/SPLIT, '+'-joined."""
  if value is None:
    return None
  items = value.split('+') if isinstance(value, str) else list(value)
  sources = []
  for item in items:
    if isinstance(item, (tuple, list)) and len(item) == 2:
      directory, split = (os.fspath(v) for v in item)
    elif isinstance(item, (str, os.PathLike)) and os.fspath(item):
      directory, split = os.path.split(os.fspath(item).rstrip('/'))
    else:
      raise front_end.kwarg_error(builder, 'images', value, 'expected DIR/SPLIT folders')
    if not os.path.exists(os.path.join(directory, split, 'dataset_info.json')):
      raise front_end.kwarg_error(builder, 'images', value, f'{directory}/{split} is not an '
                                  'image-record split folder (storage.py: DIR/SPLIT)')
    sources.append((directory, split))
  if not sources:
    raise front_end.kwarg_error(builder, 'images', value, 'expected DIR/SPLIT folders')
  return sources


def _first(folder: str, names: Sequence[str]) -> Optional[str]:
  return next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))),
              None)


# ----------------------------------------------------------------------------- VinVL

_CAPTION_FILES = ('captions.json', 'captions.pt')
_SHARED_CAPTION_FILES = _CAPTION_FILES + ('dataset_coco.json', 'dataset_flickr30k.json')
_PHRASE_FILES = ('phrases.json', 'phrases.pt')


def vinvl_manual_inputs(manual_dir: str) -> dict[str, dict[str, Optional[str]]]:
  """{split: {'features', 'predictions', 'captions', 'phrases'}} of a VinVL manual folder
  (VinvlFeatures.MANUAL_DOWNLOAD_INSTRUCTIONS)."""
  shared_captions = _first(manual_dir, _SHARED_CAPTION_FILES)
  shared_phrases = _first(manual_dir, _PHRASE_FILES)
  inputs = {}
  for name in sorted(os.listdir(manual_dir)):
    folder = os.path.join(manual_dir, name)
    if not os.path.isdir(folder) or name.startswith('.'):
      continue
    tsv, pt = _first(folder, ['features.tsv']), _first(folder, ['img_frcnn_feats.pt'])
    predictions = _first(folder, ['predictions.tsv'])
    if tsv:
      features = tsv
    elif pt:
      features, predictions = pt, _first(folder, ['labels.pt'])
    elif predictions:
      features, predictions = predictions, None
    else:
      continue
    captions = _first(folder, _CAPTION_FILES) or shared_captions
    if captions is None:
      raise VinvlImportError(f'{folder}: no {" or ".join(_CAPTION_FILES)}, and no '
                             f'{", ".join(_SHARED_CAPTION_FILES)} in {manual_dir}')
    inputs[name] = {'features': features, 'predictions': predictions, 'captions': captions,
                    'phrases': _first(folder, _PHRASE_FILES) or shared_phrases}
  if not inputs:
    raise FileNotFoundError(f'{manual_dir}: no split folder holding features.tsv, '
                            'predictions.tsv or img_frcnn_feats.pt (see '
                            'VinvlFeatures.MANUAL_DOWNLOAD_INSTRUCTIONS).')
  return inputs


class VinvlFeatures(builders._TwoFormatBuilder):  # pylint: disable=protected-access
  """VinVL / Oscar region features, captions and phrases as image records (import_vinvl.py)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Image records from VinVL / Oscar region features, captions and '
                            'phrases (input_pipeline/import_vinvl.py).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  One folder per split in the manual folder (the folder's name is the split's), holding
    features.tsv + predictions.tsv     VinVL (optionally features.lineidx + imageid2idx.json),
    predictions.tsv                    tools/img_feat_extract.py or scene_graph_benchmark rows
                                       with per-object "feature", or
    img_frcnn_feats.pt [+ labels.pt]   Oscar's Flickr {split}_img_frcnn_feats.pt [+ labels],
  and optionally captions.json or captions.pt (input_pipeline/captions.py formats) and
  phrases.json or phrases.pt (phrase_files.py formats; phrase_format=). A split folder without
  a caption file uses the manual folder's captions.json, captions.pt, dataset_coco.json or
  dataset_flickr30k.json (Karpathy's: split train keeps train + restval), and likewise its
  phrases.json / phrases.pt. Or give one split's files as kwargs:
  split=NAME,features=F,captions=C[,predictions=P][,phrases=S].
  """
  FILE_KWARGS = ('features', 'predictions', 'captions', 'phrases')
  OPTION_KWARGS = ('split', 'phrase_format', 'builtin_phrases', 'karpathy_splits',
                   'caption_id_field', 'on_error', 'max_error_fraction', 'max_messages',
                   'feature_dim', 'prefer_gt_objects', 'normalize_ids', 'verify_boxes',
                   'box_atol', 'use_index', 'report_dir')

  def __init__(self, *, split: Optional[str] = None, features: Optional[str] = None,
               predictions: Optional[str] = None, captions: Optional[str] = None,
               phrases: Optional[str] = None, phrase_format: str = 'auto',
               builtin_phrases: bool = False, karpathy_splits: Optional[Sequence[str]] = None,
               caption_id_field: str = 'auto', on_error: str = 'skip',
               max_error_fraction: float = 0.01, max_messages: int = 20,
               feature_dim: Optional[int] = None, prefer_gt_objects: bool = False,
               normalize_ids: bool = False, verify_boxes: bool = True,
               box_atol: float = VinvlOptions.box_atol, use_index: bool = True,
               report_dir: Optional[str] = None, **kwargs):
    name = self.name
    _check_names(name, kwargs, self.FILE_KWARGS + self.OPTION_KWARGS)
    files = {k: _file(name, k, v) for k, v in (('features', features), (
        'predictions', predictions), ('captions', captions), ('phrases', phrases))}
    self._split = _split_name(name, 'split', split)
    self._inputs = None
    if any(files.values()):
      if not (files['features'] and files['captions'] and split):
        raise front_end.kwarg_error(name, 'features', features, 'one split\'s files go '
                                    'together: split=, features= and captions=')
      self._inputs = {split: files}
    self._read = {
        'phrase_format': _choice(name, 'phrase_format', phrase_format,
                                 ('auto',) + phrase_files.FORMATS),
        'builtin_phrases': _bool(name, 'builtin_phrases', builtin_phrases),
        'karpathy_splits': _names(name, 'karpathy_splits', karpathy_splits),
        'caption_id_field': _choice(name, 'caption_id_field', caption_id_field,
                                    captions_lib.CAPTION_ID_FIELDS)}
    self._on_error = _choice(name, 'on_error', on_error, ('skip', 'raise'))
    self._max_error_fraction = _number(name, 'max_error_fraction', max_error_fraction, 0, 1)
    self._max_messages = _number(name, 'max_messages', max_messages, 0, integer=True)
    self._feature_dim_given = feature_dim is not None
    self._options = VinvlOptions(
        feature_dim=(VinvlOptions.feature_dim if feature_dim is None else
                     _number(name, 'feature_dim', feature_dim, 7, integer=True)),
        prefer_gt_objects=_bool(name, 'prefer_gt_objects', prefer_gt_objects),
        verify_boxes=_bool(name, 'verify_boxes', verify_boxes),
        box_atol=float(_number(name, 'box_atol', box_atol, 0)),
        use_index=_bool(name, 'use_index', use_index),
        normalize_ids=_bool(name, 'normalize_ids', normalize_ids))
    self.reports: dict[str, ImportReport] = {}
    super().__init__(**kwargs)
    # Fixed now: during generation data_dir is a temporary 'incomplete' folder.
    self.report_dir = (os.fspath(report_dir) if report_dir is not None
                       else os.fspath(self.data_dir).rstrip('/') + '.reports')

  def _info(self) -> tfds.core.DatasetInfo:
    built = None if self._feature_dim_given else self.built_features()
    return self._records_info(built or storage.record_features(self._options.feature_dim),
                              'mvp-jax image records of VinVL / Oscar region features '
                              '(input_pipeline/import_vinvl.py, features.py).')

  def _split_generators(self, dl_manager):
    inputs = self._inputs or vinvl_manual_inputs(os.fspath(dl_manager.manual_dir))
    if self._split is not None and self._inputs is None:
      if self._split not in inputs:
        raise front_end.kwarg_error(self.name, 'split', self._split,
                                    f'no such split folder (found {sorted(inputs)})')
      inputs = {self._split: inputs[self._split]}
    self.info.metadata.update(inputs=inputs, options=dataclasses.asdict(self._options),
                              import_reports={})
    return {split: self._generate_examples(split, files) for split, files in inputs.items()}

  def _generate_examples(self, split: str, files: dict):
    report = new_report(on_error=self._on_error, max_messages=self._max_messages)
    seen = set()
    try:
      records = import_vinvl.iter_records(files, split, report, self._options, **self._read)
      for index, record in enumerate(import_vinvl.checked(records, report,
                                                          self._max_error_fraction)):
        example = storage.validate_record(record, index, self._options.feature_dim)
        if example['image_id'] in seen:
          raise ValueError(f'record {index} (image_id {example["image_id"]!r}): duplicate '
                           f'image_id in split {split!r}.')
        seen.add(example['image_id'])
        yield index, example
    except BaseException as e:
      path = import_vinvl.write_report(report, self.report_dir, split,
                                       f'{type(e).__name__}: {e}', files, self._options)
      e.add_note(f'import report ({path}):\n{report.summary()}')
      raise
    import_vinvl.write_report(report, self.report_dir, split, None, files, self._options)
    self.reports[split] = report
    self.info.metadata['import_reports'][split] = report.to_dict()


# ----------------------------------------------------------------------------- tasks

def task_features(feature_dim: int) -> tfds.features.FeaturesDict:
  """An image record (storage.record_features) with the task examples of the image."""
  record = storage.record_features(feature_dim)
  return tfds.features.FeaturesDict({
      **{k: record[k] for k in record.keys()},
      'examples': tfds.features.Sequence(tfds.features.Text()),
      'example_positions': tfds.features.Sequence(np.int64),
  })


class _TaskBuilder(builders._TwoFormatBuilder):  # pylint: disable=protected-access
  """Shared machinery; subclasses define TASK, FILE_KWARGS, `_manual_inputs` and
  `_candidates`, and pass one split's files as `split_files`."""

  VERSION = tfds.core.Version('1.0.0')
  TASK = ''
  FILE_KWARGS: tuple = ()
  OWN_KWARGS: tuple = ()
  BASE_KWARGS = ('images', 'vocab_dir', 'split', 'normalize_ids', 'on_error',
                 'max_error_fraction', 'max_messages', 'report_dir')

  def __init__(self, *, split_files: Optional[dict] = None, images=None,
               vocab_dir: Optional[str] = None, split: Optional[str] = None,
               normalize_ids: bool = True, on_error: str = 'skip',
               max_error_fraction: float = 0.01, max_messages: int = 20,
               report_dir: Optional[str] = None, **kwargs):
    name = self.name
    _check_names(name, kwargs, self.FILE_KWARGS + self.OWN_KWARGS + self.BASE_KWARGS)
    self._split = _split_name(name, 'split', split)
    self._split_files = split_files if split_files and any(split_files.values()) else None
    if self._split_files is not None and split is None:
      raise front_end.kwarg_error(name, 'split', split, "one split's files need its name")
    self._sources = image_sources(name, images)
    self._vocab_dir = front_end.path_kwarg(name, 'vocab_dir', vocab_dir, folder=True)
    self._normalize_ids = _bool(name, 'normalize_ids', normalize_ids)
    self._on_error = _choice(name, 'on_error', on_error, ('skip', 'raise'))
    self._max_error_fraction = _number(name, 'max_error_fraction', max_error_fraction, 0, 1)
    self._max_messages = _number(name, 'max_messages', max_messages, 0, integer=True)
    self._dim = None
    if self._sources:
      dims = {storage.RecordSource(d, s).feature_dim for d, s in self._sources}
      if len(dims) != 1:
        raise front_end.kwarg_error(name, 'images', images, f'the image sources have region '
                                    f'features of different widths {sorted(dims)}')
      self._dim = dims.pop()
    self._answers = None
    self.reports: dict[str, ImportReport] = {}
    super().__init__(**kwargs)
    self.report_dir = (os.fspath(report_dir) if report_dir is not None
                       else os.fspath(self.data_dir).rstrip('/') + '.reports')

  def _info(self) -> tfds.core.DatasetInfo:
    features = task_features(self._dim) if self._dim is not None else self.built_features()
    if features is None:
      raise ValueError(f'{self.name}: no built dataset in {self.data_path}; to build it pass '
                       'images=DIR/SPLIT (image-record split folders, storage.py; + between '
                       f'them); with `tfds build`: {self.name}/images=DIR/SPLIT.')
    return self._records_info(features, f'mvp-jax {self.TASK!r} task examples with their image '
                              'records (input_pipeline/tasks/examples.py, features.py).')

  def _manual_inputs(self, manual_dir: str) -> dict[str, dict]:
    """{split: that split's files} found in the manual folder."""
    raise NotImplementedError

  def _prepare(self, inputs: dict[str, dict], manual_dir: Optional[str]) -> None:
    """Anything every split needs before its examples are read (VQA: the answers)."""

  def _candidates(self, split: str, files: dict, report: ImportReport) -> list:
    """The split's importing.Candidate examples, problems going to `report`."""
    raise NotImplementedError

  def _source_file(self, files: dict) -> str:
    return files[self.FILE_KWARGS[0]]

  def _split_generators(self, dl_manager):
    if not self._sources:
      raise front_end.kwarg_error(self.name, 'images', None, 'a task build needs its image '
                                  'records: images=DIR/SPLIT[+DIR/SPLIT]')
    manual_dir = None if self._split_files else os.fspath(dl_manager.manual_dir)
    inputs = ({self._split: self._split_files} if self._split_files
              else self._manual_inputs(manual_dir))
    if self._split is not None and not self._split_files:
      if self._split not in inputs:
        raise front_end.kwarg_error(self.name, 'split', self._split,
                                    f'not in the manual folder (found {sorted(inputs)})')
      inputs = {self._split: inputs[self._split]}
    if not inputs:
      raise FileNotFoundError(f'{manual_dir}: no input file of {self.name} (see its '
                              'MANUAL_DOWNLOAD_INSTRUCTIONS).')
    self._prepare(inputs, manual_dir)
    self.info.metadata.update(
        task=self.TASK, answers=self._answers, import_reports={},
        vocab_dir=os.path.abspath(self._vocab_dir or self._sources[0][0]),
        image_sources=[list(s) for s in self._sources],
        sources={split: self._source_file(files) for split, files in inputs.items()})
    return {split: self._generate_examples(split, files) for split, files in inputs.items()}

  def _generate_examples(self, split: str, files: dict):
    report = importing.new_report(on_error=self._on_error, max_messages=self._max_messages)
    joined = importing.join_images(
        split, task=self.TASK, candidates=self._candidates(split, files, report),
        image_sources=self._sources, normalize_ids=self._normalize_ids, report=report,
        report_dir=self.report_dir, max_error_fraction=self._max_error_fraction,
        num_answers=len(self._answers or ()))
    self.reports[split] = report
    self.info.metadata['import_reports'][split] = report.to_dict()
    for index, (record, examples) in enumerate(joined):
      yield index, {**storage.validate_record(record, index, self._dim),
                    'examples': [json.dumps(e, separators=(',', ':')) for _, e in examples],
                    'example_positions': [p for p, _ in examples]}


class VqaConfig(tfds.core.BuilderConfig):
  """qla: VinVL's *_qla_mrcnn.json files, else VQA v2's questions + annotations."""

  def __init__(self, *, qla: bool, **kwargs):
    super().__init__(**kwargs)
    self.qla = qla


_VQA_SPLITS = (('train2014', 'train'), ('val2014', 'val'), ('test2015', 'test'),
               ('test-dev2015', 'test_dev'))


class VqaTask(_TaskBuilder):
  """VQA v2 or VinVL's qla form as 'vqa' task splits (tasks/vqa.py)."""

  TASK = 'vqa'
  RELEASE_NOTES = {'1.0.0': 'VQA questions with soft answer targets and their image records '
                            '(input_pipeline/tasks/vqa.py).'}
  BUILDER_CONFIGS = [
      VqaConfig(name='v2', qla=False, description='VQA v2 questions and annotations.'),
      VqaConfig(name='vinvl_qla', qla=True, description="VinVL's *_qla_mrcnn.json files."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Config v2 (https://visualqa.org/download.html): v2_OpenEnded_mscoco_{train2014, val2014,
  test2015, test-dev2015}_questions.json and, for train and val, v2_mscoco_{train2014,
  val2014}_annotations.json; config vinvl_qla (VinVL's VQA data): {train2014, val2014, test2015,
  test-dev2015}_qla_mrcnn.json. The splits are train, val, test and test_dev, those whose file
  is there. Answer vocabulary: answer_vocab=FILE, else trainval_ans2label.pkl in the manual
  folder, else (v2) built from the train annotations (min_answer_count=). Or give one split's
  files as kwargs: split=NAME,questions=Q[,annotations=A] (v2) or split=NAME,qla=F (vinvl_qla).
  """
  FILE_KWARGS = ('questions', 'annotations', 'qla')
  OWN_KWARGS = ('answer_vocab', 'min_answer_count', 'builtin_phrases', 'keep_unanswered')

  def __init__(self, *, questions: Optional[str] = None, annotations: Optional[str] = None,
               qla: Optional[str] = None, answer_vocab: Optional[str] = None,
               min_answer_count: int = 9, builtin_phrases: bool = True,
               keep_unanswered: Optional[bool] = None, **kwargs):
    name = self.name
    files = {'questions': _file(name, 'questions', questions),
             'annotations': _file(name, 'annotations', annotations), 'qla': _file(name, 'qla', qla)}
    if files['qla'] and (files['questions'] or files['annotations']):
      raise front_end.kwarg_error(name, 'qla', qla, 'give qla= or questions= (+ annotations=), '
                                  'not both')
    if files['annotations'] and not files['questions']:
      raise front_end.kwarg_error(name, 'annotations', annotations, 'needs questions=')
    self._answer_vocab = _file(name, 'answer_vocab', answer_vocab)
    self._min_answer_count = _number(name, 'min_answer_count', min_answer_count, 1, integer=True)
    self._builtin_phrases = _bool(name, 'builtin_phrases', builtin_phrases)
    self._keep_unanswered = _bool(name, 'keep_unanswered', keep_unanswered, optional=True)
    super().__init__(split_files=files, **kwargs)
    if self._split_files and bool(files['qla']) != self.builder_config.qla:
      raise front_end.kwarg_error(name, 'qla' if files['qla'] else 'questions',
                                  qla or questions, f'does not go with config '
                                  f'{self.builder_config.name!r} (vinvl_qla: qla=, v2: '
                                  'questions=)')

  def _source_file(self, files):
    return files['qla'] or files['questions']

  def _manual_inputs(self, manual_dir):
    inputs = {}
    for tag, split in _VQA_SPLITS:
      if self.builder_config.qla:
        files = {'questions': None, 'annotations': None,
                 'qla': _first(manual_dir, [f'{tag}_qla_mrcnn.json'])}
      else:
        files = {'questions': _first(manual_dir, [f'v2_OpenEnded_mscoco_{tag}_questions.json']),
                 'annotations': _first(manual_dir, [f'v2_mscoco_{tag}_annotations.json']),
                 'qla': None}
      if files['qla'] or files['questions']:
        inputs[split] = files
    return inputs

  def _prepare(self, inputs, manual_dir):
    path = self._answer_vocab or (manual_dir and _first(manual_dir, ['trainval_ans2label.pkl']))
    if path:
      self._answers = vqa.load_answer_vocab(path)
      return
    # Built from the annotations of this split (one split's files) or of train.
    annotated = [f for s, f in inputs.items()
                 if f['annotations'] and (self._split_files or s == 'train')]
    if not annotated:
      raise ValueError('qla labels and test questions need an answer vocabulary (answer_vocab=, '
                       'trainval_ans2label.pkl in the manual folder, or answers.json already '
                       'in out_dir).')
    entries = vqa.read_vqa_v2(annotated[0]['questions'], annotated[0]['annotations'],
                              importing.new_report())
    self._answers = vqa.build_answer_vocab(entries, self._min_answer_count)

  def _candidates(self, split, files, report):
    return vqa.read_candidates(
        files, self._answers, report, split=split, normalize_ids=self._normalize_ids,
        builtin_phrases=self._builtin_phrases, keep_unanswered=self._keep_unanswered)


class SnliVeTask(_TaskBuilder):
  """SNLI-VE as 've' task splits (tasks/snli_ve.py)."""

  TASK = 've'
  RELEASE_NOTES = {'1.0.0': 'SNLI-VE hypotheses with their labels and image records '
                            '(input_pipeline/tasks/snli_ve.py).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place in the manual folder snli_ve_train.jsonl, snli_ve_dev.jsonl and snli_ve_test.jsonl
  (https://github.com/necla-ml/SNLI-VE; splits train, dev, test: those that are there) and
  optionally the authors' phrases train_sgs.json, dev_sgs.json, test_sgs.json. Or give one
  split's files as kwargs: split=NAME,jsonl=F[,phrases=S].
  """
  FILE_KWARGS = ('jsonl', 'phrases')
  OWN_KWARGS = ('builtin_phrases',)

  def __init__(self, *, jsonl: Optional[str] = None, phrases: Optional[str] = None,
               builtin_phrases: bool = True, **kwargs):
    files = {'jsonl': _file(self.name, 'jsonl', jsonl),
             'phrases': _file(self.name, 'phrases', phrases)}
    if files['phrases'] and not files['jsonl']:
      raise front_end.kwarg_error(self.name, 'phrases', phrases, 'needs jsonl=')
    self._builtin_phrases = _bool(self.name, 'builtin_phrases', builtin_phrases)
    super().__init__(split_files=files, **kwargs)

  def _manual_inputs(self, manual_dir):
    return {split: {'jsonl': path, 'phrases': _first(manual_dir, [f'{split}_sgs.json'])}
            for split in ('train', 'dev', 'test')
            if (path := _first(manual_dir, [f'snli_ve_{split}.jsonl']))}

  def _candidates(self, split, files, report):
    return snli_ve.read_candidates(files['jsonl'], files['phrases'], report,
                                   normalize_ids=self._normalize_ids,
                                   builtin_phrases=self._builtin_phrases)


class RefcocoTask(_TaskBuilder):
  """RefCOCO / RefCOCO+ / RefCOCOg as 're' task splits (tasks/refcoco.py)."""

  TASK = 're'
  RELEASE_NOTES = {'1.0.0': 'Referring expressions with their target boxes and image records '
                            '(input_pipeline/tasks/refcoco.py).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place in the manual folder the refs, refs(unc).p (RefCOCO, RefCOCO+), refs(umd).p or
  refs(google).p (RefCOCOg) or refs.json, and instances.json (https://github.com/lichengunc/refer
  data/<dataset>/); every ref split in the refs becomes a split (train, val, testA, testB; umd:
  train, val, test), or ref_split=NAME only that one. Or give the files as kwargs:
  refs=R,instances=I,ref_split=S[,split=NAME].
  """
  FILE_KWARGS = ('refs', 'instances', 'ref_split')
  _REFS = ('refs(unc).p', 'refs(umd).p', 'refs(google).p', 'refs.json')

  def __init__(self, *, refs: Optional[str] = None, instances: Optional[str] = None,
               ref_split: Optional[str] = None, split: Optional[str] = None, **kwargs):
    files = {'refs': _file(self.name, 'refs', refs),
             'instances': _file(self.name, 'instances', instances)}
    ref_split = _split_name(self.name, 'ref_split', ref_split)
    given = bool(files['refs'] or files['instances'])
    if given and not (files['refs'] and files['instances'] and ref_split):
      raise front_end.kwarg_error(self.name, 'refs', refs, 'the files go together: refs=, '
                                  'instances= and ref_split=')
    super().__init__(split_files=dict(files, ref_split=ref_split) if given else None,
                     split=split or (ref_split if given else None), **kwargs)
    self._ref_split = ref_split

  def _manual_inputs(self, manual_dir):
    refs, instances = _first(manual_dir, self._REFS), _first(manual_dir, ['instances.json'])
    if not refs or not instances:
      raise FileNotFoundError(f'{manual_dir}: needs instances.json and one of {self._REFS}.')
    found = sorted({r['split'] for r in refcoco.load_refs(refs)
                    if isinstance(r, dict) and isinstance(r.get('split'), str)})
    splits = [self._ref_split] if self._ref_split else found
    return {s: {'refs': refs, 'instances': instances, 'ref_split': s} for s in splits}

  def _candidates(self, split, files, report):
    return refcoco.read_candidates(files['refs'], files['instances'], files['ref_split'],
                                   report, normalize_ids=self._normalize_ids)


# ----------------------------------------------------------------------------- import commands

def _build_into(builder_cls, out_dir: str, split: str, kwargs: dict):
  """(builder, its data_dir): one split built into OUT_DIR/.tfds/<split>.<id> (array_record
  only), reports in OUT_DIR; the build's folder is removed when it fails."""
  data_dir = os.path.join(out_dir, BUILDS, f'{split}.{uuid.uuid4().hex[:12]}')
  try:
    builder = builder_cls(split=split, data_dir=data_dir, file_format='array_record',
                          report_dir=out_dir, **kwargs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except BaseException:
    _remove_build(data_dir)
    raise
  return builder, data_dir


def _remove_build(data_dir: str) -> None:
  shutil.rmtree(data_dir, ignore_errors=True)
  root = os.path.dirname(data_dir)
  if os.path.isdir(root) and not os.listdir(root):
    os.rmdir(root)


def _keep_only(data_dir: str, split: str) -> None:
  """Removes the earlier builds of `split`: the one laid out now is in `data_dir`."""
  root = os.path.dirname(data_dir)
  for name in os.listdir(root):
    if name.rpartition('.')[0] == split and name != os.path.basename(data_dir):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def import_vinvl_split(out_dir: str, split: str, **kwargs) -> ImportReport:
  """`vinvl_features` with one split's files (VinvlFeatures kwargs), laid out as `out_dir/split`
  (storage.py); returns the split's report. The caller checks the folder (ownership.py)."""
  builder, data_dir = _build_into(VinvlFeatures, out_dir, split, kwargs)
  try:
    dim = builder.info.features['region_features'].shape[-1]
    layout.merge_metadata(out_dir, {'source': 'vinvl', 'region_feature_dim': dim})
    layout.link_split(builder.data_dir, out_dir, split, overwrite=True)
  except BaseException:
    _remove_build(data_dir)
    raise
  _keep_only(data_dir, split)
  return builder.reports[split]


def import_task_split(builder_cls, out_dir: str, split: str, *, overwrite: bool = False,
                      **kwargs) -> examples_lib.TaskInfo:
  """A task builder with one split's files, laid out as split `split` of the task dataset
  `out_dir` (layout.link_task); returns its TaskInfo. The caller checks the folder."""
  info_path = os.path.join(out_dir, examples_lib.TASK_FILE)
  if (not overwrite and os.path.exists(info_path)
      and split in examples_lib.load_task_info(out_dir).splits):
    raise FileExistsError(f'{out_dir}/{split}: split already written (pass overwrite=True).')
  builder, data_dir = _build_into(builder_cls, out_dir, split, kwargs)
  try:
    info = layout.link_task(builder.data_dir, out_dir, split, overwrite=overwrite)
  except BaseException:
    _remove_build(data_dir)
    raise
  _keep_only(data_dir, split)
  return info
