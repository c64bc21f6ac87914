"""A builder's region front-end from its keyword arguments: Python objects or `tfds build` strings.

The TFDS command line passes builder kwargs in the dataset name (TFDS 4.9
core/naming.py: `name[/config][:version]/k=v,k2=v2`; values hold no ',' or '=' and arrive cast
to bool / int / float / str), so every part of the front-end has a plain-value kwarg besides
the objects Python callers pass:

  features=DIR            given regions (regions.GivenRegions(DIR), extract.py's folder)
  checkpoint=CKPT         SigLIP inline (regions.SiglipRegions), with grid=7, batch_size=32,
                          labels=FILE (tag labels, one a line; default the Visual Genome classes)
  phrases=FILE            a phrase file (phrase_files.py formats); default the built-in extractor
  use_beam=True           Beam (also implied when the DownloadConfig carries beam_options)
  max_error_fraction=F, report_dir=DIR (builders.py)

`parse()` checks them and raises BuilderKwargError naming the kwarg; `settings()` is what the
builder records in the built dataset's metadata.json ('front_end'), so reading it back by name
(`tfds.builder(name, data_dir=...)`) needs none of them.
"""

import os
from typing import Any, Optional

from input_pipeline.sources import regions as regions_lib
from input_pipeline.sources import samples as samples_lib

SIGLIP_DEFAULTS = {'grid': 7, 'batch_size': 32, 'labels': None}


class BuilderKwargError(ValueError):
  """A bad builder kwarg; names it, its value and what is expected."""


def kwarg_error(builder: str, kwarg: str, value: Any, expected: str) -> BuilderKwargError:
  """The error of a bad builder kwarg, saying how `tfds build` passes it."""
  return BuilderKwargError(f'{builder}: builder kwarg {kwarg}={value!r}: {expected} (in '
                           f'`tfds build` pass it as {builder}/{kwarg}=VALUE).')


def path_kwarg(builder, kwarg, value, *, folder: bool) -> Optional[str]:
  """`value` as an existing path (a folder with `folder`), None for None."""
  if value is None:
    return None
  if isinstance(value, int) and not isinstance(value, bool):
    value = str(value)  # `tfds build` cast a numeric name to int
  if not isinstance(value, (str, os.PathLike)):
    raise kwarg_error(builder, kwarg, value, 'expected a path')
  value = os.fspath(value)
  if not (os.path.isdir(value) if folder else os.path.exists(value)):
    raise kwarg_error(builder, kwarg, value, f'no such {"folder" if folder else "file or folder"}')
  return value


def _positive_int(builder, kwarg, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise kwarg_error(builder, kwarg, value, 'expected a positive integer')
  return value


def parse(builder: str, *, regions=None, features=None, checkpoint=None, grid=None,
          batch_size=None, labels=None, phrases=None, use_beam=None,
          max_error_fraction=0.01, report_dir=None) -> dict:
  """{'regions', 'phrases', 'use_beam', 'max_error_fraction', 'report_dir'} from the kwargs
  (module docstring); `regions` None when no front-end is given (reading a built dataset)."""
  features = path_kwarg(builder, 'features', features, folder=True)
  checkpoint = path_kwarg(builder, 'checkpoint', checkpoint, folder=False)
  front_ends = {'regions': regions, 'features': features, 'checkpoint': checkpoint}
  given = [k for k, v in front_ends.items() if v is not None]
  if len(given) > 1:
    raise kwarg_error(builder, given[1], front_ends[given[1]],
                 f'give one region front-end, not both {given[0]}= and {given[1]}=')
  siglip = {'grid': grid, 'batch_size': batch_size, 'labels': labels}
  if checkpoint is None:
    stray = next((k for k, v in siglip.items() if v is not None), None)
    if stray:
      raise kwarg_error(builder, stray, siglip[stray],
                        'only used with checkpoint= (SigLIP inline)')
  if features is not None:
    try:
      regions = regions_lib.GivenRegions(features)
    except (OSError, ValueError, KeyError) as e:
      raise kwarg_error(builder, 'features', features, f'not a features folder ({e})') from None
  elif checkpoint is not None:
    regions = regions_lib.SiglipRegions(
        checkpoint,
        grid=_positive_int(builder, 'grid', SIGLIP_DEFAULTS['grid'] if grid is None else grid),
        batch_size=_positive_int(builder, 'batch_size', SIGLIP_DEFAULTS['batch_size']
                                 if batch_size is None else batch_size),
        labels_file=path_kwarg(builder, 'labels', labels, folder=False))
  if phrases is None or isinstance(phrases, samples_lib.Phrases):
    phrases = phrases or samples_lib.Phrases()
  else:
    phrases = samples_lib.Phrases(path_kwarg(builder, 'phrases', phrases, folder=False))
  if use_beam is not None and not isinstance(use_beam, bool):
    raise kwarg_error(builder, 'use_beam', use_beam, 'expected True or False')
  if (isinstance(max_error_fraction, bool) or not isinstance(max_error_fraction, (int, float))
      or not 0 <= max_error_fraction <= 1):
    raise kwarg_error(builder, 'max_error_fraction', max_error_fraction, 'expected a number in [0, 1]')
  if report_dir is not None and not isinstance(report_dir, (str, os.PathLike)):
    raise kwarg_error(builder, 'report_dir', report_dir, 'expected a path')
  return {'regions': regions, 'phrases': phrases, 'use_beam': use_beam,
          'max_error_fraction': float(max_error_fraction),
          'report_dir': None if report_dir is None else os.fspath(report_dir)}


def settings(regions, phrases: samples_lib.Phrases) -> dict:
  """The front-end as JSON values, recorded in the built dataset."""
  describe = getattr(regions, 'settings', None)
  return {'regions': {'class': type(regions).__name__,
                      **(describe() if describe else {'feature_dim': regions.feature_dim})},
          'phrases': (os.path.abspath(phrases.phrase_file) if phrases.phrase_file
                      else 'built-in extractor')}
