"""The COCO caption (annotation) id of each Karpathy COCO caption, from COCO's own captions files.

eccv-caption (ECCV Caption, CxC and its COCO 5k lists) keys every caption by its COCO caption
annotation id: the `id` of an entry of `annotations` in COCO's captions_val2014.json /
captions_train2014.json (image 391895's five are 770337, 771687, 772707, 776154, 781998). The
position of a caption in a built record says nothing about that id, so the COCO builder attaches
the id of each kept caption by matching it, inside its image, to the official file's captions:

  table = load_caption_table(['/data/coco/annotations/captions_val2014.json'])
  ids = match_caption_ids(table, '391895', captions, sentids, where)   # [len(captions)] int

A caption matches a COCO caption of the same image whose text is equal after whitespace is
collapsed, else (`loose`) equal after lower-casing and keeping only letters and digits. It is an
error (naming the image and the caption) when a caption of an image the files cover matches none,
or matches several and Karpathy's own `sentid` of it is not one of them, or when two captions of
an image get the same id. Images the given files do not cover get no ids (None).
"""

import json
import os
import re
from typing import Optional, Sequence

CAPTION_FILES = ('captions_val2014.json', 'captions_train2014.json')


class CaptionIdError(ValueError):
  """A Karpathy caption without a unique COCO caption id; names the image and the caption."""


def find_caption_files(manual_dir: str) -> list[str]:
  """COCO's captions_{val,train}2014.json in MANUAL_DIR/annotations/ or MANUAL_DIR/."""
  found = []
  for name in CAPTION_FILES:
    for path in (os.path.join(manual_dir, 'annotations', name), os.path.join(manual_dir, name)):
      if os.path.isfile(path):
        found.append(path)
        break
  return found


def _strict(text: str) -> str:
  return ' '.join(text.split())


def _loose(text: str) -> str:
  return ' '.join(re.findall(r'[a-z0-9]+', text.lower()))


def load_caption_table(paths: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
  """{image id (str): [(caption id, text), ...]} of COCO captions files."""
  table = {}
  for path in paths:
    try:
      with open(path, encoding='utf-8') as f:
        data = json.load(f)
      annotations = data['annotations']
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise CaptionIdError(f'{path}: not a COCO captions file ({type(e).__name__}: {e}).') from None
    for i, a in enumerate(annotations):
      if not (isinstance(a, dict) and isinstance(a.get('id'), int) and
              isinstance(a.get('image_id'), int) and isinstance(a.get('caption'), str)):
        raise CaptionIdError(f'{path}: annotations[{i}] needs int "id", int "image_id" and str '
                             f'"caption", got {a!r:.200}.')
      table.setdefault(str(a['image_id']), []).append((a['id'], a['caption']))
  return table


def match_caption_ids(table: dict, image_id: str, captions: Sequence[str],
                      sentids: Sequence[Optional[int]], where: str) -> Optional[list[int]]:
  """The COCO caption id of each caption of one image (module docstring); None when `table` does
  not hold the image. `sentids`: Karpathy's sentid of each caption (None where absent)."""
  candidates = table.get(image_id)
  if candidates is None:
    return None
  ids = []
  for k, (text, sentid) in enumerate(zip(captions, sentids)):
    found = [cid for cid, t in candidates if _strict(t) == _strict(text)]
    if not found:
      found = [cid for cid, t in candidates if _loose(t) == _loose(text)]
    if len(found) > 1 and sentid in found:
      found = [sentid]
    if len(found) != 1:
      what = 'no COCO caption' if not found else f'{len(found)} COCO captions {sorted(found)}'
      raise CaptionIdError(
          f'{where} (image {image_id}) caption {k} {text!r}: matches {what} of the image in the '
          f'captions files (its COCO captions: {[t for _, t in candidates]}).')
    ids.append(found[0])
  if len(set(ids)) != len(ids):
    raise CaptionIdError(f'{where} (image {image_id}): captions {list(captions)} match the COCO '
                         f'caption ids {ids}, some twice.')
  return ids
