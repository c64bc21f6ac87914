"""Command lines of the input pipeline: absl flags, defined only when a command runs.

Every `main(argv)` defines its flags on a fresh `absl.flags.FlagValues` (never on the global
FLAGS), so importing a module defines no flag, a user's own flags (e.g. `--seed`) never clash,
and `main` can run twice in one process. `run` parses, runs and turns the expected errors into
a message and exit status 1; bad flags give the usage and status 2; `--help` prints the command's
docstring and every flag with its explanation, and exits 0 (absl's own `--help` exits 1 and,
under a console script, lists no flag). The VQA, SNLI-VE and RefCOCO importers share
`define_importer_flags` and `run_importer`.
"""

import inspect
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import flags

Define = Callable[[flags.FlagValues], None]
# Every error of bad input is one of these: TaskDataError, VinvlImportError, PhraseFileError
# are ValueErrors; NotOwnedError, FileExistsError and FileNotFoundError are OSErrors.
EXPECTED_ERRORS = (ValueError, OSError)
HELP_ARGS = ('-h', '-?', '-help', '--help', '-helpshort', '--helpshort', '-helpfull', '--helpfull')


def wants_help(args: Sequence[str]) -> bool:
  """Whether `args` (without the program name) ask for help before any `--`."""
  for arg in args:
    if arg == '--':
      return False
    if arg in HELP_ARGS:
      return True
  return False


def help_text(prog: str, doc: Optional[str], define: Define) -> str:
  """The command's docstring, its usage line and every flag of `define` with its help."""
  if os.path.basename(sys.argv[0]).startswith('mvp-'):
    prog = os.path.basename(sys.argv[0])  # a console script: name it as the user typed it
  values = flags.FlagValues()
  define(values)
  return f'{inspect.cleandoc(doc or "")}\n\nUSAGE: {prog} [flags]\n\n{values.get_help(include_special_flags=False)}\n'


def exit_on_help(prog: str, doc: Optional[str], define: Define) -> None:
  """For absl `app.run` commands: print `help_text` and exit 0 when sys.argv asks for help."""
  if wants_help(sys.argv[1:]):
    print(help_text(prog, doc, define))
    sys.exit(0)


def parse(prog: str, argv: Optional[Sequence[str]], define: Define,
          required: Sequence[str] = ()) -> flags.FlagValues:
  """The parsed flags of `define` (argv without the program name; None: sys.argv[1:])."""
  values = flags.FlagValues()
  define(values)
  for name in required:
    flags.mark_flag_as_required(name, flag_values=values)
  values([prog] + list(sys.argv[1:] if argv is None else argv))
  return values


def run(prog: str, argv: Optional[Sequence[str]], define: Define, body: Callable[[Any], int],
        required: Sequence[str] = (), what: str = 'import', doc: Optional[str] = None) -> int:
  """Parses the flags and runs `body(flag_values)`; returns the exit status.

  `doc` (default: the docstring of the module that defines `define`) heads the `--help` text.
  """
  if wants_help(sys.argv[1:] if argv is None else argv):
    print(help_text(prog, doc or sys.modules[define.__module__].__doc__, define))
    return 0
  try:
    values = parse(prog, argv, define, required)
  except flags.Error as e:
    print(f'{prog}: {e}\nRun with --help for the flags.', file=sys.stderr)
    return 2
  try:
    return body(values)
  except EXPECTED_ERRORS as e:
    print(f'{what} failed: {e}', file=sys.stderr)
    notes = getattr(e, '__notes__', [])
    if notes:
      print('\n'.join(notes), file=sys.stderr)
    return 1


def define_importer_flags(values: flags.FlagValues) -> None:
  """The flags every task importer (vqa, snli_ve, refcoco) takes."""
  flags.DEFINE_multi_string('images', None, 'Image-record dataset DIR:SPLIT (repeatable), '
                            'searched in order.', flag_values=values)
  flags.DEFINE_string('vocab_dir', None, 'Vocabularies (default: the first --images DIR).',
                      flag_values=values)
  flags.DEFINE_string('out_dir', None, 'Task dataset directory.', flag_values=values)
  flags.DEFINE_string('split', None, 'Stored split name.', flag_values=values)
  flags.DEFINE_bool('normalize_ids', True, "Key images by str(int(id.split('_')[-1])).",
                    flag_values=values)
  flags.DEFINE_enum('on_error', 'skip', ['skip', 'raise'], 'Skip bad entries, or stop.',
                    flag_values=values)
  flags.DEFINE_float('max_error_fraction', 0.01, 'Fail when more examples are lost.',
                     flag_values=values)
  flags.DEFINE_bool('overwrite', False, 'Replace a complete split.', flag_values=values)


def importer_args(values: flags.FlagValues, split: Optional[str] = None) -> dict:
  """The shared importer flags as keyword arguments of the import functions."""
  return {'out_dir': values.out_dir, 'split': split or values.split,
          'image_sources': parse_image_sources(values.images),
          'vocab_dir': values.vocab_dir, 'normalize_ids': values.normalize_ids,
          'on_error': values.on_error, 'max_error_fraction': values.max_error_fraction,
          'overwrite': values.overwrite}


def run_importer(prog: str, argv: Optional[Sequence[str]], define: Define,
                 do_import: Callable[[flags.FlagValues], Any], required: Sequence[str] = (),
                 split_required: bool = True) -> int:
  """Runs a task importer: shared + own flags, `do_import(flags) -> TaskInfo`, one summary."""
  def define_all(values):
    define_importer_flags(values)
    define(values)

  def body(values):
    info = do_import(values)
    print(f'{values.out_dir} ({info.task}): complete splits {dict(info.splits)}')
    return 0

  needed = ['images', 'out_dir'] + (['split'] if split_required else []) + list(required)
  return run(prog, argv, define_all, body, needed, doc=sys.modules[define.__module__].__doc__)


def parse_image_sources(values: Sequence[str]) -> list[tuple[str, str]]:
  """Command-line image sources 'DIR:SPLIT' -> [(DIR, SPLIT)]."""
  sources = []
  for value in values:
    directory, sep, split = value.rpartition(':')
    if not sep or not directory or not split:
      raise ValueError(f'image source {value!r} must look like DIR:SPLIT (an image-record '
                       'dataset written by input_pipeline.storage, e.g. a VinVL import).')
    sources.append((directory, split))
  return sources
