r"""Converts the authors' released MVPTR checkpoints into files the mvp-jax trainer starts from.

  python -m mvp_jax.import_authors --checkpoint=mvp_base/pytorch_model.bin --out=/tmp/mvp_base
  python main.py --config=configs/mvp_base.py --workdir=/tmp/run \
      --config.init_from=/tmp/mvp_base/model.safetensors [--config.init_skip=...]

The released checkpoints are `base` (pre-training), `base_for_coco` / `base_for_fk` (retrieval),
`base_for_vqa` and others. All share the `bert.*` backbone (spec §6); their heads differ:
- pre-training: `cls.predictions`, `cls.seq_relationship`, `half_mlm`, optional `qa_head`;
- retrieval: `classifier` [2, H] (label 1 = matched, the opposite of `cls.seq_relationship`) and
  `logit_scale`; `--classifier_as_itm` turns it into the ITM head by swapping its two rows;
- VQA: `cls.predictions` whose decoder has one row per answer (not per word), no ITM head;
- VE / RE: `classifier` [3, H] / [2, H].
Tensors that fit the pre-training model go to `<out>/model.safetensors` (float32 under the
authors' names: weights saved from fp16 engines are cast up, spec §1.9); the others are kept in
`<out>/extra_heads.safetensors`. Pre-training parameters the checkpoint lacks are listed with the
`init_skip` regexes that leave them freshly initialised. A missing `logit_scale` is filled with
log(1/0.07). The image LayerNorm (`bert.LayerNorm`, present only when the checkpoint was trained
with use_img_layernorm=1) is kept as found by default; `--img_layernorm=add` adds an identity-
initialised one (what the authors' code does when fine-tuning a checkpoint without it),
`--img_layernorm=drop` removes it. `<out>/config.json` holds the authors' BertConfig fields and
the exact mvp-jax ModelConfig, so `export_hf.load_exported(out)` and `inference.Predictor` read it
(copy the dataset's vocab.txt and id2phrase.json beside it for inference).
"""

import json
import math
import os
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np

from mvp_jax import convert

EXTRA_FILE = 'extra_heads.safetensors'
# Pre-training head prefixes and the init_skip regex that leaves each fresh.
_HEAD_SKIPS = (('cls.predictions.', r'^cls\.predictions\.'),
               ('cls.seq_relationship.', r'^cls\.seq_relationship\.'),
               ('half_mlm.', r'^half_mlm\.'), ('qa_head.', r'^qa_head\.'),
               ('bert.LayerNorm.', r'^bert\.LayerNorm\.'))


def _source_dtypes(path: str) -> List[str]:
  """The tensor dtypes stored in a checkpoint file (to report fp16 weights)."""
  if path.endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(path, 'np') as f:
      return sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
  if path.endswith(('.bin', '.pt', '.pth')):
    import torch  # pylint: disable=g-import-not-at-top
    raw = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    if isinstance(raw, dict) and isinstance(raw.get('state_dict'), dict):
      raw = raw['state_dict']
    return sorted({str(v.dtype).replace('torch.', '') for v in raw.values()
                   if hasattr(v, 'dtype')})
  return ['float32']


def classify(state: Dict[str, np.ndarray]) -> str:
  """'pretraining', 'retrieval', 'vqa', 've', 're' or 'backbone' from the head tensors."""
  if 'classifier.weight' in state:
    rows = state['classifier.weight'].shape[0]
    if rows == 3:
      return 've'
    return 'retrieval' if 'logit_scale' in state else 're'
  if 'cls.predictions.decoder.weight' in state and 'cls.seq_relationship.weight' not in state \
      and 'half_mlm.decoder.weight' not in state:
    return 'vqa'
  if any(k.startswith(('cls.', 'half_mlm.')) for k in state):
    return 'pretraining'
  return 'backbone'


def _neighbour_config(checkpoint: str) -> Dict[str, Any]:
  folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
  path = os.path.join(folder, 'config.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  return {}


def import_checkpoint(checkpoint: str, out_dir: str, *, num_heads: Optional[int] = None,
                      word_vocab_size: Optional[int] = None, img_layernorm: str = 'auto',
                      classifier_as_itm: bool = False) -> Dict[str, Any]:
  """Converts an authors' checkpoint (see the module docstring); returns the report dict.

  Args:
    checkpoint: `pytorch_model.bin` / `.safetensors` file, or a folder holding one.
    out_dir: output folder (model.safetensors, config.json, maybe extra_heads.safetensors).
    num_heads: attention heads (default: config.json beside the checkpoint, else hidden / 64).
    word_vocab_size: MLM output size (default: read off the MLM decoder; 30522 for VQA).
    img_layernorm: 'auto' (keep as found), 'add' (identity LayerNorm if missing), 'drop'.
    classifier_as_itm: use a retrieval `classifier` as the ITM head (rows swapped).
  """
  from mvp_jax import export_hf  # pylint: disable=g-import-not-at-top
  if img_layernorm not in ('auto', 'add', 'drop'):
    raise ValueError(f"img_layernorm must be 'auto', 'add' or 'drop', got {img_layernorm!r}.")
  path = checkpoint
  if os.path.isdir(checkpoint):
    path = next((os.path.join(checkpoint, n) for n in ('model.safetensors', 'pytorch_model.bin')
                 if os.path.exists(os.path.join(checkpoint, n))), checkpoint)
  dtypes = _source_dtypes(path) if os.path.isfile(path) else []
  state = {re.sub(r'^module\.', '', k): v for k, v in convert.load_state_dict(path).items()}
  if 'bert.embeddings.word_embeddings.weight' not in state:
    raise convert.ConversionError(
        f'{checkpoint} has no bert.embeddings.word_embeddings.weight: not an MVPTR checkpoint '
        f'(first names: {sorted(state)[:5]}).')
  kind = classify(state)
  notes = []
  extra = {}

  if kind in ('retrieval', 've', 're'):
    classifier = {k: state.pop(k) for k in ('classifier.weight', 'classifier.bias')}
    if classifier_as_itm and kind == 'retrieval':
      state['cls.seq_relationship.weight'] = classifier['classifier.weight'][::-1].copy()
      state['cls.seq_relationship.bias'] = classifier['classifier.bias'][::-1].copy()
      notes.append('classifier (label 1 = matched) became cls.seq_relationship (label 0 = '
                   'matched) by swapping its rows.')
    else:
      extra.update(classifier)
      notes.append(f'the {kind} classifier {list(classifier["classifier.weight"].shape)} is not '
                   f'a pre-training head: kept in {EXTRA_FILE}' + (
                       '; --classifier_as_itm would use it as the ITM head'
                       if kind == 'retrieval' else '') + '.')
  if kind == 'vqa':
    answers = state['cls.predictions.decoder.weight'].shape[0]
    for name in [k for k in state if k.startswith('cls.predictions.')]:
      extra[name] = state.pop(name)
    notes.append(f'cls.predictions is the VQA answer head ({answers} answer rows, not '
                 f'{word_vocab_size or 30522} words): kept in {EXTRA_FILE}; the pre-training MLM '
                 'head starts fresh.')
  if 'logit_scale' not in state:
    state['logit_scale'] = np.asarray(math.log(1 / 0.07), np.float32)
    notes.append('logit_scale was absent and is set to log(1/0.07) (the ITC initial value).')

  has_ln = 'bert.LayerNorm.weight' in state
  if img_layernorm == 'add' and not has_ln:
    hidden = state['bert.embeddings.word_embeddings.weight'].shape[1]
    state['bert.LayerNorm.weight'] = np.ones([hidden], np.float32)
    state['bert.LayerNorm.bias'] = np.zeros([hidden], np.float32)
    notes.append('added an identity-initialised image LayerNorm (bert.LayerNorm).')
  elif img_layernorm == 'drop' and has_ln:
    for name in ('bert.LayerNorm.weight', 'bert.LayerNorm.bias'):
      extra[name] = state.pop(name)
    notes.append('dropped the image LayerNorm: region embeddings change, fine-tune to adapt.')
  else:
    notes.append(f'image LayerNorm {"present" if has_ln else "absent"} '
                 f'(use_region_layernorm={has_ln}).')

  overrides = {}
  heads = num_heads or _neighbour_config(checkpoint).get('num_attention_heads')
  if heads:
    overrides['num_heads'] = int(heads)
  if word_vocab_size:
    overrides['word_vocab_size'] = int(word_vocab_size)
  elif 'cls.predictions.decoder.weight' not in state and 'half_mlm.decoder.weight' not in state:
    overrides['word_vocab_size'] = min(30522, state[
        'bert.embeddings.word_embeddings.weight'].shape[0])
  config = convert.infer_config(state, **overrides)
  entries = convert.pretraining_entries(config)
  names = {e.torch_name for e in entries}
  for name in [k for k in state if k not in names]:
    extra[name] = state.pop(name)
  present = [e for e in entries if e.torch_name in state]
  convert.torch_to_params(state, config, present)  # validates every shape
  missing = [e.torch_name for e in entries if e.torch_name not in state]
  skips = sorted({regex for prefix, regex in _HEAD_SKIPS
                  if any(m.startswith(prefix) for m in missing)})
  unexplained = [m for m in missing if not any(m.startswith(p) for p, _ in _HEAD_SKIPS)]
  if unexplained:
    raise convert.ConversionError(f'{checkpoint} lacks backbone tensors {unexplained[:8]}.')

  os.makedirs(out_dir, exist_ok=True)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.array(v, np.float32, order='C') for k, v in state.items()},
            os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
  if extra:
    save_file({k: np.array(v, np.float32, order='C') for k, v in extra.items()},
              os.path.join(out_dir, EXTRA_FILE), metadata={'format': 'pt'})
  folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
  copied = []
  for name in ('vocab.txt', 'id2phrase.json', 'id2phrase_new.json'):
    source = os.path.join(folder, name)
    if os.path.exists(source):
      target = 'id2phrase.json' if name.startswith('id2phrase') else name
      shutil.copyfile(source, os.path.join(out_dir, target))
      copied.append(target)
  import dataclasses  # pylint: disable=g-import-not-at-top
  report = {'checkpoint': os.path.abspath(path), 'kind': kind, 'source_dtypes': dtypes,
            'written_dtype': 'float32', 'tensors': len(state), 'extra_tensors': sorted(extra),
            'missing': missing, 'init_skip': skips, 'notes': notes, 'copied': copied}
  fields = export_hf.authors_config(config)
  fields['mvp_jax'] = {'format_version': export_hf.FORMAT_VERSION,
                       'model_config': dataclasses.asdict(config), 'import': report}
  with open(os.path.join(out_dir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(fields, f, indent=1)
  return report


def describe(report: Dict[str, Any], out_dir: str) -> str:
  """A human-readable summary of an import, with the trainer flags to use it."""
  lines = [f'Imported a {report["kind"]} checkpoint ({", ".join(report["source_dtypes"]) or "?"}'
           f' -> float32): {report["tensors"]} tensors.']
  lines += [f'- {note}' for note in report['notes']]
  if report['extra_tensors']:
    lines.append(f'- {len(report["extra_tensors"])} tensors outside the pre-training model are '
                 f'in {os.path.join(out_dir, EXTRA_FILE)}.')
  flags = f'--config.init_from={os.path.join(out_dir, "model.safetensors")}'
  if report['init_skip']:
    lines.append(f'- missing pre-training parameters (fresh at init): {report["missing"][:6]}'
                 f'{" ..." if len(report["missing"]) > 6 else ""}')
    flags += f' --config.init_skip="{tuple(report["init_skip"])!r}"'
  lines.append(f'Train from it with: {flags}')
  return '\n'.join(lines)


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  report = import_checkpoint(values.checkpoint, values.out, num_heads=values.num_heads,
                             word_vocab_size=values.word_vocab_size,
                             img_layernorm=values.img_layernorm,
                             classifier_as_itm=values.classifier_as_itm)
  print(describe(report, values.out))


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string('checkpoint', None, 'pytorch_model.bin / .safetensors or a folder.')
  absl_flags.DEFINE_string('out', None, 'Output folder.')
  absl_flags.DEFINE_integer('num_heads', None, 'Attention heads (default: config.json or H/64).')
  absl_flags.DEFINE_integer('word_vocab_size', None, 'MLM output size (default: inferred).')
  absl_flags.DEFINE_enum('img_layernorm', 'auto', ['auto', 'add', 'drop'],
                         'Image LayerNorm: keep as found, add an identity one, or drop it.')
  absl_flags.DEFINE_bool('classifier_as_itm', False,
                         'Use a retrieval classifier as the ITM head (rows swapped).')
  absl_flags.mark_flags_as_required(['checkpoint', 'out'])
  app.run(_main)
