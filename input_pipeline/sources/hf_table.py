"""A Hugging Face `datasets` table saved locally: `save_to_disk` folders or parquet files.

  HfTableSource('/data/my_table', image_column='image', text_column='caption')
  HfTableSource('/data/parquet/*.parquet', ...)          # one split, 'train'

Nothing is downloaded: `datasets.load_from_disk` (a Dataset or DatasetDict folder; a DatasetDict's
splits are kept) or `datasets.Dataset.from_parquet` on local files. The image column may be a
`datasets.Image` feature (read undecoded: its bytes, or its path), raw bytes, or a file path; the
text column a str or a list of str. Image ids come from `id_column` when given (str of the
value, unique per split), else '{split}-{row}'. Shards are `shard_size` consecutive rows.
"""

import glob
import os
from typing import Optional

from input_pipeline import optional
from input_pipeline.sources import samples as samples_lib


class HfTableSource:
  """See the module docstring."""

  def __init__(self, path: str, *, image_column: str = 'image', text_column: str = 'text',
               id_column: Optional[str] = None, shard_size: int = 1000):
    self.path, self.shard_size = os.fspath(path), shard_size
    self.image_column, self.text_column, self.id_column = image_column, text_column, id_column
    self.name = 'hf_table'
    self._tables = None
    for split, table in self._load().items():
      missing = [c for c in (image_column, text_column, id_column)
                 if c is not None and c not in table.column_names]
      if missing:
        raise ValueError(f'{self.path} ({split}): no columns {missing}; it has '
                         f'{table.column_names}.')

  def _load(self) -> dict:
    if self._tables is None:
      datasets = optional.require('datasets', f'Reading the Hugging Face table {self.path}')
      if os.path.isdir(self.path) and not glob.glob(os.path.join(self.path, '*.parquet')):
        loaded = datasets.load_from_disk(self.path)
        tables = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {'train': loaded}
      else:
        files = sorted(glob.glob(os.path.join(self.path, '*.parquet') if os.path.isdir(
            self.path) else self.path))
        if not files:
          raise FileNotFoundError(f'{self.path}: no saved dataset or parquet files.')
        tables = {'train': datasets.Dataset.from_parquet(files, keep_in_memory=False)}
      for split, table in tables.items():
        if isinstance(table.features.get(self.image_column), datasets.Image):
          tables[split] = table.cast_column(self.image_column, datasets.Image(decode=False))
      self._tables = tables
    return self._tables

  def __getstate__(self):  # Beam pickles sources: workers reopen the (memory-mapped) table.
    return {**self.__dict__, '_tables': None}

  def splits(self) -> dict[str, list[str]]:
    return {split: [f'{split}-{start // self.shard_size:06d}'
                    for start in range(0, len(table), self.shard_size)]
            for split, table in self._load().items()}

  def read(self, shard: str):
    split, _, index = shard.rpartition('-')
    table = self._load()[split]
    start = int(index) * self.shard_size
    rows = table[start:start + self.shard_size]
    samples, problems, seen = [], [], set()
    for i in range(len(rows[self.text_column])):
      row = start + i
      image_id = (str(rows[self.id_column][i]) if self.id_column else f'{split}-{row}')
      where = f'{self.path} ({split}) row {row}'
      problem = lambda kind, detail: problems.append(  # pylint: disable=cell-var-from-loop
          samples_lib.Problem(shard, image_id, kind, f'{where}: {detail}'))
      if image_id in seen:
        problem('duplicate_key', f'id {image_id!r} repeats')
        continue
      seen.add(image_id)
      try:
        captions = samples_lib.captions_from_text(rows[self.text_column][i], where)
      except ValueError as e:
        problem('bad_caption' if rows[self.text_column][i] is not None else 'missing_caption',
                str(e))
        continue
      image = self._image_bytes(rows[self.image_column][i])
      if isinstance(image, str):
        problem('missing_image', image)
        continue
      samples.append(samples_lib.Sample(image_id, image, captions, where))
    return samples, problems

  def _image_bytes(self, value):
    """The encoded image, or a str saying why there is none."""
    if isinstance(value, dict):
      if value.get('bytes'):
        return bytes(value['bytes'])
      value = value.get('path')
    if isinstance(value, (bytes, bytearray)) and value:
      return bytes(value)
    if isinstance(value, str) and value:
      path = value if os.path.isabs(value) else os.path.join(os.path.dirname(self.path), value)
      if os.path.isfile(path):
        with open(path, 'rb') as f:
          return f.read()
      return f'image file {path} does not exist'
    return f'empty image cell ({type(value).__name__})'
