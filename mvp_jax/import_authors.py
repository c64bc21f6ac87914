r"""Converts the authors' released MVPTR checkpoints into exported folders (`weights.export`).

  python -m mvp_jax.import_authors --checkpoint=mvp_base/pytorch_model.bin --out=/tmp/mvp_base
  python main.py --config=configs/mvp_base.py --workdir=/tmp/run --config.init_from=/tmp/mvp_base

`--config.init_from` (and `mvp_jax.load_checkpoint`) read the authors' files directly too; the
import is for keeping a float32 copy with its exact config and vocabularies, readable without
torch. The released checkpoints are `base` (pre-training), `base_for_coco` / `base_for_fk`
(retrieval), `base_for_vqa` and others; all share the `bert.*` backbone (spec §6), and the heads
say which model a file is of (`convert.source_task`):
- pre-training: `cls.predictions`, `cls.seq_relationship`, `half_mlm`, optional `qa_head`;
- retrieval: `classifier` [2, H] (label 1 = matched, the opposite of `cls.seq_relationship`) and
  `logit_scale`;
- VQA: `cls.predictions` whose decoder has one row per answer (not per word);
- SNLI-VE / RE: `classifier` [3, H] / [num_labels, H].
The folder keeps the checkpoint's task layout (`config.json` says which, `mvp_jax.task`); weights
saved from fp16 engines are cast up to float32 (spec §1.9). A missing `logit_scale` (VQA, VE, RE)
is set to log(1/0.07). The image LayerNorm (`bert.LayerNorm`, present only when the checkpoint was
trained with use_img_layernorm=1) is kept as found by default; `--img_layernorm=add` adds an
identity one (what the authors' code does when fine-tuning a checkpoint without it),
`--img_layernorm=drop` removes it. The vocab.txt and id2phrase(_new).json beside the checkpoint
are copied. `--vocab_multiple=128` records a padded vocabulary (`ModelConfig.vocab_multiple`)
in the folder's config, for loading into the base configs; the written tensors keep the
checkpoint's row counts either way.
"""

import os
from typing import Any, Dict, List, Optional

from absl import app
from absl import flags
from safetensors import safe_open

from input_pipeline import cli
from input_pipeline import optional

from mvp_jax import api
from mvp_jax import run_dir
from mvp_jax import weights


_SAFETENSORS_DTYPES = {'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16', 'F64': 'float64'}


def _source_dtypes(path: str) -> List[str]:
  """The tensor dtypes stored in a checkpoint file (to report fp16 weights)."""
  if path.endswith('.safetensors'):
    with safe_open(path, 'np') as f:
      return sorted({_SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(), 'other')
                     for k in f.keys()})
  if path.endswith(('.bin', '.pt', '.pth')):
    torch = optional.require('torch', f'Reading {path}')
    raw = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    if isinstance(raw, dict) and isinstance(raw.get('state_dict'), dict):
      raw = raw['state_dict']
    return sorted({str(v.dtype).replace('torch.', '') for v in raw.values()
                   if hasattr(v, 'dtype')})
  return ['float32']


def _checkpoint_file(checkpoint: str) -> str:
  if os.path.isdir(checkpoint):
    for name in (run_dir.MODEL_FILE, 'pytorch_model.bin'):
      if os.path.exists(os.path.join(checkpoint, name)):
        return os.path.join(checkpoint, name)
  return checkpoint


def import_checkpoint(checkpoint: str, out_dir: str, *, num_heads: Optional[int] = None,
                      word_vocab_size: Optional[int] = None,
                      img_layernorm: str = 'auto',
                      vocab_multiple: Optional[int] = None) -> Dict[str, Any]:
  """Converts an authors' checkpoint (see the module docstring); returns the report dict.

  Args:
    checkpoint: `pytorch_model.bin` / `.safetensors` file, or a folder holding one.
    out_dir: output folder (config.json, model.safetensors, the vocabularies found).
    num_heads: attention heads (default: config.json beside the checkpoint, else hidden / 64).
    word_vocab_size: MLM output size (default: read off the MLM decoder; 30522 for the tasks).
    img_layernorm: 'auto' (keep as found), 'add' (identity LayerNorm if missing), 'drop'.
    vocab_multiple: the recorded config's `vocab_multiple` (default 1: no padding); the exported
      tensors have the checkpoint's row counts whatever it is (`vocab_padding.fit_rows`).
  """
  if img_layernorm not in ('auto', 'add', 'drop'):
    raise ValueError(f"img_layernorm must be 'auto', 'add' or 'drop', got {img_layernorm!r}.")
  source = weights.read(checkpoint)
  if source.kind not in ('authors', 'npz'):
    raise weights.WeightsError(f'{checkpoint} is {source.kind!r}, not an authors\' checkpoint.')
  overrides = {k: v for k, v in (('num_heads', num_heads), ('word_vocab_size', word_vocab_size),
                                 ('vocab_multiple', vocab_multiple)) if v}
  if img_layernorm != 'auto':
    overrides['use_region_layernorm'] = img_layernorm == 'add'
  config, params, load_report = api.load_checkpoint_with_report(source, **overrides)
  task = 'pretrain' if source.task == 'backbone' else source.task
  vocab_dir = source.vocab_dir if source.vocab_dir and _has_both(source.vocab_dir) else None
  weights.export(params, config, out_dir, task=task, vocab_dir=vocab_dir)
  path = _checkpoint_file(checkpoint)
  report = {'checkpoint': os.path.abspath(path), 'kind': source.task,
            'source_dtypes': _source_dtypes(path) if os.path.isfile(path) else [],
            'written_dtype': 'float32', 'tensors': len(load_report.loaded),
            'fresh': load_report.fresh, 'skipped': load_report.skipped,
            'notes': load_report.notes,
            'copied': sorted(n for n in os.listdir(out_dir)
                             if n == 'vocab.txt' or n.endswith('.model') or n.startswith('id2'))}
  config_path = os.path.join(out_dir, run_dir.CONFIG_FILE)
  fields = run_dir.read_json(config_path)
  fields['mvp_jax']['import'] = report
  run_dir.write_json(fields, config_path)
  return report


def _has_both(directory: str) -> bool:
  try:
    run_dir.tokenizer_file(directory)
    run_dir.concepts_file(directory)
  except FileNotFoundError:
    return False
  return True


def describe(report: Dict[str, Any], out_dir: str) -> str:
  """A human-readable summary of an import, with the trainer flag to use it."""
  lines = [f'Imported a {report["kind"]} checkpoint ({", ".join(report["source_dtypes"]) or "?"}'
           f' -> float32): {report["tensors"]} parameters.']
  lines += [f'- {note}' for note in report['notes']]
  if not report['copied']:
    lines.append('- No vocab.txt / id2phrase.json beside the checkpoint: copy the dataset\'s '
                 f'into {out_dir} for inference.')
  lines.append(f'Train from it with: --config.init_from={out_dir}')
  return '\n'.join(lines)


def main(argv) -> None:
  del argv
  values = flags.FLAGS
  report = import_checkpoint(values.checkpoint, values.out, num_heads=values.num_heads,
                             word_vocab_size=values.word_vocab_size,
                             img_layernorm=values.img_layernorm,
                             vocab_multiple=values.vocab_multiple)
  print(describe(report, values.out))


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('checkpoint', None, "The authors' pytorch_model.bin / .safetensors, or a "
                      'folder holding one (with its config.json).', flag_values=values)
  flags.DEFINE_string('out', None, 'Output folder (an exported folder that '
                      'mvp_jax.load_checkpoint and --config.init_from read).', flag_values=values)
  flags.DEFINE_integer('num_heads', None, 'Attention heads (default: config.json, else '
                       'hidden size / 64).', flag_values=values)
  flags.DEFINE_integer('word_vocab_size', None, 'MLM output size (default: inferred from the '
                       'decoder weights).', flag_values=values)
  flags.DEFINE_integer('vocab_multiple', None, 'Pad the vocabulary to a multiple of this in '
                       'the recorded config (128 for the base configs); the tensors keep the '
                       "checkpoint's row counts.", flag_values=values)
  flags.DEFINE_enum('img_layernorm', 'auto', ['auto', 'add', 'drop'],
                    'Image LayerNorm: keep as found, add an identity one, or drop it.',
                    flag_values=values)
  flags.mark_flags_as_required(['checkpoint', 'out'], flag_values=values)


def run() -> None:
  """`python -m mvp_jax.import_authors` and the `mvp-import-authors` console script."""
  cli.exit_on_help('python -m mvp_jax.import_authors', __doc__, define_flags)
  define_flags(flags.FLAGS)
  app.run(main)


if __name__ == '__main__':
  run()
