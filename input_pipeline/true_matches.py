"""Which captions are true of which images of a split, as two batch columns.

A split's truth is stored as meaning ids (one per caption) and, per image, the sorted ids of the
meanings true of it. Batches carry two columns built from `example_index` / `image_index`:

  caption_meaning  int32 [B]     the meaning id of the row's caption (-1 on padding rows)
  image_meanings   int32 [B, K]  the ids true of the row's image, padded with -1

so that the step builds the [B, B] mask "caption i is true of image j" in-graph
(`mvp_jax.losses.true_match_mask`). K is the largest count of the split (static for a run) and
must not exceed `max_width` (a clear error names the image otherwise).

Sources (`data.true_matches`):
  'truth'       the ShapesWorld truth file `truth_<split>.npz` written at build time
                (input_pipeline/shapesworld/truth.py: exact truth from the scene graphs);
  'duplicates'  real data: a caption is true of an image when its normalised text (lower case,
                words only) equals one of the image's own captions (`duplicate_truth`);
  'none'        no columns.
"""

import dataclasses
import re
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

from etils import epath
import numpy as np

MODES = ('none', 'truth', 'duplicates')
COLUMNS = ('caption_meaning', 'image_meanings')
DEFAULT_MAX_WIDTH = 256
_ARRAYS = ('caption_meaning', 'image_offsets', 'image_meanings')


def truth_path(directory: str, split: str) -> epath.Path:
  return epath.Path(directory) / f'truth_{split}.npz'


def save(directory: str, split: str, table: Mapping[str, np.ndarray]) -> None:
  """Writes `table` (truth.split_truth's arrays; 'meanings' optional) atomically."""
  path = truth_path(directory, split)
  tmp = path.parent / (path.name + '.tmp')
  with tmp.open('wb') as f:
    np.savez(f, **{k: np.asarray(v) for k, v in table.items()})
  tmp.rename(path)


def normalise(text: str) -> str:
  """'A dog, running.' -> 'a dog running' (duplicate-caption detection)."""
  return ' '.join(re.findall(r'[a-z0-9]+', text.lower()))


def duplicate_truth(captions: Sequence[Sequence[str]]) -> Dict[str, np.ndarray]:
  """The table of 'duplicates': meaning = normalised text; an image's meanings = its captions'."""
  ids: Dict[str, int] = {}
  caption_meaning = [ids.setdefault(normalise(t), len(ids)) for texts in captions for t in texts]
  per_image, start = [], 0
  for texts in captions:
    per_image.append(sorted(set(caption_meaning[start:start + len(texts)])))
    start += len(texts)
  offsets = np.concatenate([[0], np.cumsum([len(p) for p in per_image])]).astype(np.int64)
  flat = np.asarray([m for p in per_image for m in p], np.int32)
  return {'caption_meaning': np.asarray(caption_meaning, np.int32), 'image_offsets': offsets,
          'image_meanings': flat}


@dataclasses.dataclass(frozen=True)
class TrueMatches:
  """A split's truth (module docstring); `where` names it in messages."""
  caption_meaning: np.ndarray  # [C] int32
  image_offsets: np.ndarray  # [I + 1] int64
  image_meanings: np.ndarray  # [sum] int32
  where: str
  max_width: int = DEFAULT_MAX_WIDTH

  def __post_init__(self):
    counts = np.diff(self.image_offsets)
    if len(counts) and counts.max() > self.max_width:
      image = int(counts.argmax())
      raise ValueError(f'{self.where}: image {image} has {int(counts.max())} true meanings, more '
                       f'than the bound {self.max_width}; raise data.max_true_meanings.')

  @property
  def width(self) -> int:
    """K: the padded width of `image_meanings` (at least 1)."""
    counts = np.diff(self.image_offsets)
    return max(int(counts.max()) if len(counts) else 0, 1)

  def columns(self, example_index: np.ndarray, image_index: np.ndarray) -> Dict[str, np.ndarray]:
    """The two batch columns for rows of `example_index` / `image_index` ([B], -1 = padding)."""
    example_index = np.asarray(example_index, np.int64)
    image_index = np.asarray(image_index, np.int64)
    num_captions, num_images = len(self.caption_meaning), len(self.image_offsets) - 1
    if (example_index >= num_captions).any() or (image_index >= num_images).any():
      raise ValueError(f'{self.where}: rows of examples up to {int(example_index.max())} / '
                       f'images up to {int(image_index.max())}, but the truth covers '
                       f'{num_captions} captions of {num_images} images; rebuild it.')
    valid = example_index >= 0
    caption = np.where(valid, self.caption_meaning[np.maximum(example_index, 0)], -1)
    width = self.width
    start = self.image_offsets[np.maximum(image_index, 0)]
    count = np.where(image_index >= 0, self.image_offsets[np.maximum(image_index, 0) + 1] - start,
                     0)
    slot = np.arange(width)[None, :]
    flat = np.minimum(start[:, None] + slot, max(len(self.image_meanings) - 1, 0))
    taken = self.image_meanings[flat] if len(self.image_meanings) else np.zeros_like(flat)
    meanings = np.where(slot < count[:, None], taken, -1)
    return {'caption_meaning': caption.astype(np.int32),
            'image_meanings': meanings.astype(np.int32)}

  def matrix(self) -> np.ndarray:
    """[C, I] bool: caption c is true of image i (for small splits: evaluation, tests)."""
    num_images = len(self.image_offsets) - 1
    out = np.zeros((len(self.caption_meaning), num_images), bool)
    for image in range(num_images):
      ids = self.image_meanings[self.image_offsets[image]:self.image_offsets[image + 1]]
      out[:, image] = np.isin(self.caption_meaning, ids)
    return out


def from_table(table: Mapping[str, np.ndarray], where: str,
               max_width: int = DEFAULT_MAX_WIDTH) -> TrueMatches:
  missing = [k for k in _ARRAYS if k not in table]
  if missing:
    raise ValueError(f'{where}: truth table lacks {missing}.')
  return TrueMatches(*(np.asarray(table[k]) for k in _ARRAYS), where=where, max_width=max_width)


def load(directory: str, split: str, mode: str, *, captions: Optional[Sequence[Sequence[str]]]
         = None, max_width: int = DEFAULT_MAX_WIDTH) -> Optional[TrueMatches]:
  """The split's truth for `mode` (module docstring); None for 'none'.

  'duplicates' needs the split's `captions` per image in stored order.
  """
  if mode not in MODES:
    raise ValueError(f'Unknown data.true_matches {mode!r}; expected one of {MODES}.')
  if mode == 'none':
    return None
  if mode == 'duplicates':
    if captions is None:
      raise ValueError("data.true_matches='duplicates' needs the split's captions.")
    return from_table(duplicate_truth(captions), f'{directory}/{split} (duplicates)', max_width)
  path = truth_path(directory, split)
  if not path.exists():
    raise FileNotFoundError(
        f"data.true_matches='truth': {path} does not exist. ShapesWorld writes it at build time "
        "(re-run the build into this folder to add it); for other data use 'duplicates' or "
        "'none'.")
  with path.open('rb') as f:
    with np.load(f) as npz:
      table = {k: npz[k] for k in npz.files}
  return from_table(table, str(path), max_width)


class WithTrueMatches:
  """An iterator of batches (with `example_index`, `image_index`) plus the two truth columns;
  position, state and `batches_per_epoch` are those of the wrapped iterator."""

  def __init__(self, iterator: Any, true_matches: TrueMatches):
    self._iterator, self._true = iterator, true_matches
    self.batches_per_epoch = iterator.batches_per_epoch

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    batch = dict(next(self._iterator))
    batch.update(self._true.columns(batch['example_index'], batch['image_index']))
    return batch

  def get_state(self) -> Dict[str, Any]:
    return self._iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._iterator.set_state(state)
