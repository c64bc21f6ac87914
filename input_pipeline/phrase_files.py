"""Reads scene-graph phrase files (spec §5.2) into one table keyed by (image id, caption index).

A phrase is a tuple of 1 to 3 strings: (object,), (object, attribute) or (subject, relation,
object). Every format below becomes a `PhraseTable`, `{(image_id, k): [tuple of str, ...]}`, with
`image_id` a str and `k` the 0-based index of the caption among that image's captions:

  spice   SPICE `-detailed` output (tools/phrase_parse.sh):
          [{"image_id": "{id}_{k}", "test_tuples": [{"tuple": [...]}, ...], ...}, ...].
  coco    coco_full_sg.pt: {image_id: [[ 'man_ride_horse', 'dog', ...] for each caption]},
          tuples stored as '_'-joined strings.
  flickr  fk_sg.pt: {image_id: [[['man', 'ride', 'horse'], ['dog'], ...] for each caption]}.
  ve      SNLI-VE {split}_sgs.json: [[tuples, pairID], ...], one hypothesis each: key (pairID, 0).
  re      RE re_sg_{split}.json: SPICE output whose image_id is the example id: key (id, 0).
  processed  tools/phrase_parse.sh's `processed_*.json`: [{"image_id", "text", "phrases"}]. It
          names each caption by its text, so it is keyed (image_id, text_key(text)) and joined by
          text: captions re-ordered after parsing still get their own phrases. The formats above
          name a caption only by its index k and cannot detect such a re-ordering.

Containers: `.json`, `.pkl`/`.pickle` (pickle runs code from the file: trusted files only) and
`.pt`, loaded with `torch.load(weights_only=True)` when torch is importable. torch is imported only
when a `.pt` file is read, never by importing this module.
VQA's `*_sg_tuples.json` hold concept ids, not tuples, and are not a phrase file.
"""

import os
from typing import Any

from input_pipeline import jsonio

PhraseTuple = tuple[str, ...]
PhraseTable = dict[tuple[str, int], list[PhraseTuple]]

FORMATS = ('spice', 'coco', 'flickr', 've', 're', 'processed')
MAX_TUPLE_LEN = 3


class PhraseFileError(ValueError):
  """A phrase file that cannot be read; the message names the file and the entry."""


def normalize_tuple(value: Any, where: str) -> PhraseTuple:
  """One phrase as a tuple of 1 to 3 non-empty strings; `where` names it in errors."""
  if isinstance(value, str) or not isinstance(value, (list, tuple)):
    raise PhraseFileError(f'{where}: a phrase must be a list of strings, got {value!r}')
  if not 1 <= len(value) <= MAX_TUPLE_LEN:
    raise PhraseFileError(f'{where}: a phrase has 1 to {MAX_TUPLE_LEN} items, got {value!r}')
  if not all(isinstance(item, str) and item for item in value):
    raise PhraseFileError(f'{where}: phrase items must be non-empty strings, got {value!r}')
  return tuple(value)


def normalize_tuples(values: Any, where: str, *, joined: bool = False) -> list[PhraseTuple]:
  """The phrases of one caption; `joined` phrases are '_'-joined strings (COCO's file)."""
  if not isinstance(values, (list, tuple)):
    raise PhraseFileError(f'{where}: expected a list of phrases, got {type(values).__name__}')
  phrases = []
  for j, value in enumerate(values):
    if joined:
      if not isinstance(value, str):
        raise PhraseFileError(f'{where}, phrase {j}: expected a "_"-joined str, got {value!r}')
      value = value.split('_')
    phrases.append(normalize_tuple(value, f'{where}, phrase {j}'))
  return phrases


def load_container(path: str) -> Any:
  """The Python object stored in a .json, .pkl/.pickle or .pt file (jsonio.load_container)."""
  return jsonio.load_container(path, PhraseFileError)


def _add(table: PhraseTable, key: tuple[str, int], phrases: list[PhraseTuple], where: str):
  if key in table:
    raise PhraseFileError(f'{where}: duplicate entry for image {key[0]!r} caption {key[1]}')
  table[key] = phrases


def parse_spice(data: Any, path: str, *, split_caption_index: bool = True) -> PhraseTable:
  """SPICE -detailed output; image ids are "{id}_{k}" unless `split_caption_index` is False."""
  if not isinstance(data, list):
    raise PhraseFileError(f'{path}: SPICE output must be a list, got {type(data).__name__}')
  table = {}
  for i, entry in enumerate(data):
    where = f'{path}: entry {i}'
    if not isinstance(entry, dict) or 'image_id' not in entry or 'test_tuples' not in entry:
      raise PhraseFileError(f'{where}: expected a dict with "image_id" and "test_tuples"')
    raw_id = str(entry['image_id'])
    where = f'{where} (image_id {raw_id!r})'
    if split_caption_index:
      image_id, _, k = raw_id.rpartition('_')
      if not image_id or not k.isdigit():
        raise PhraseFileError(f'{where}: image_id must look like "{{id}}_{{caption index}}"')
      key = (image_id, int(k))
    else:
      key = (raw_id, 0)
    tuples = entry['test_tuples']
    if not isinstance(tuples, list) or not all(isinstance(t, dict) and 'tuple' in t
                                               for t in tuples):
      raise PhraseFileError(f'{where}: "test_tuples" must be a list of {{"tuple": [...]}}')
    _add(table, key, normalize_tuples([t['tuple'] for t in tuples], where), where)
  return table


def parse_caption_lists(data: Any, path: str, *, joined: bool) -> PhraseTable:
  """COCO (`joined`) or Flickr files: {image_id: [phrases of caption 0, caption 1, ...]}."""
  if not isinstance(data, dict):
    raise PhraseFileError(f'{path}: expected a dict image_id -> list of captions\' phrases, '
                          f'got {type(data).__name__}')
  table = {}
  for raw_id, per_caption in data.items():
    where = f'{path}: image {raw_id!r}'
    if not isinstance(per_caption, (list, tuple)):
      raise PhraseFileError(f'{where}: expected one phrase list per caption')
    for k, phrases in enumerate(per_caption):
      caption_where = f'{where}, caption {k}'
      _add(table, (str(raw_id), k), normalize_tuples(phrases, caption_where, joined=joined),
           caption_where)
  return table


def text_key(text: str) -> str:
  """How a caption's text identifies it: lower-cased, whitespace collapsed."""
  return ' '.join(str(text).lower().split())


def parse_processed(data: Any, path: str) -> dict:
  """[{"image_id", "text", "phrases"}] -> {(image_id, text_key(text)): phrases}."""
  if not isinstance(data, list):
    raise PhraseFileError(f'{path}: expected a list of {{"image_id", "text", "phrases"}}')
  table = {}
  for i, entry in enumerate(data):
    where = f'{path}: entry {i}'
    if not isinstance(entry, dict) or not {'image_id', 'text', 'phrases'} <= set(entry):
      raise PhraseFileError(f'{where}: expected a dict with "image_id", "text" and "phrases"')
    key = (str(entry['image_id']), text_key(entry['text']))
    phrases = normalize_tuples(entry['phrases'], where)
    if key in table and table[key] != phrases:
      raise PhraseFileError(f'{where}: image {key[0]!r} has the caption {entry["text"]!r} twice '
                            'with different phrases')
    table[key] = phrases
  return table


def parse_ve(data: Any, path: str) -> PhraseTable:
  """SNLI-VE [(tuples, pairID), ...]: key (str(pairID), 0)."""
  if not isinstance(data, list):
    raise PhraseFileError(f'{path}: expected a list of [tuples, pairID], got '
                          f'{type(data).__name__}')
  table = {}
  for i, entry in enumerate(data):
    where = f'{path}: entry {i}'
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
      raise PhraseFileError(f'{where}: expected [tuples, pairID], got {entry!r:.80}')
    tuples, pair_id = entry
    where = f'{where} (pairID {pair_id!r})'
    _add(table, (str(pair_id), 0), normalize_tuples(tuples, where), where)
  return table


def detect_format(data: Any, path: str) -> str:
  """Guesses the format of loaded data; RE files look like SPICE and need fmt='re'."""
  if isinstance(data, list) and data:
    if isinstance(data[0], dict) and 'test_tuples' in data[0]:
      return 'spice'
    if isinstance(data[0], dict) and {'text', 'phrases'} <= set(data[0]):
      return 'processed'
    if isinstance(data[0], (list, tuple)) and len(data[0]) == 2:
      return 've'
  if isinstance(data, dict):
    for per_caption in data.values():
      for phrases in per_caption if isinstance(per_caption, (list, tuple)) else ():
        if isinstance(phrases, (list, tuple)) and phrases:
          return 'coco' if isinstance(phrases[0], str) else 'flickr'
  raise PhraseFileError(f'{path}: cannot tell the phrase format; pass one of {FORMATS}')


def load_phrase_file(path: str, fmt: str = 'auto') -> PhraseTable:
  """Reads a phrase file of format `fmt` (one of FORMATS, or 'auto') into a PhraseTable."""
  path = os.fspath(path)
  if fmt != 'auto' and fmt not in FORMATS:
    raise ValueError(f'unknown phrase format {fmt!r}; expected auto or one of {FORMATS}')
  data = load_container(path)
  if fmt == 'auto':
    fmt = detect_format(data, path)
  if fmt == 'spice':
    return parse_spice(data, path)
  if fmt == 're':
    return parse_spice(data, path, split_caption_index=False)
  if fmt == 've':
    return parse_ve(data, path)
  if fmt == 'processed':
    return parse_processed(data, path)
  return parse_caption_lists(data, path, joined=fmt == 'coco')
