r"""Export a training run as a Hugging Face Hub folder (`weights.export` plus a model card).

  python -m mvp_jax.export_hf --workdir=/tmp/mvp_tiny --out=/tmp/mvp_tiny_hf \
      [--dataset_dir=DIR] [--step=N] [--push_to_hub=user/mvp-tiny [--private]]
  python -m mvp_jax.export_hf --workdir=/tmp/mvp_tiny --out=/tmp/text_bert --text_encoder_only

The folder holds
  config.json         the authors' BertConfig-style fields (spec §1.1: `num_hidden_layers` is
                      twice the per-encoder depth, because their code builds each of the three
                      encoders from num_hidden_layers // 2) plus an `mvp_jax` section with our
                      exact ModelConfig, sequence lengths and data config, used to reload;
  model.safetensors   float32 weights in the authors' layout of the run's model (spec §6);
  vocab.txt | *.model the tokenizer of the run's dataset, and id2phrase.json its concepts;
  text_encoder/       the text encoder as a standard `transformers.BertModel` (`hf_bert.py`);
  README.md           a model card built from the training config and the last evaluation metrics
                      (read from the run's TensorBoard event files).
`mvp_jax.load_checkpoint(folder)` (or `weights.load`) returns (ModelConfig, params) equal to the
run's. `--text_encoder_only` writes just the text encoder as a `transformers.BertModel` folder.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from absl import app
from absl import flags
from etils import epath

from input_pipeline import cli

from mvp_jax import api
from mvp_jax import hf_bert
from mvp_jax import run_dir
from mvp_jax import weights
from mvp_jax.config import ModelConfig

TEXT_ENCODER_DIR = 'text_encoder'
_HIDDEN_METRICS = ('steps_per_sec', 'uptime')


def read_metrics(workdir: str) -> Dict[str, Tuple[int, float]]:
  """{tag: (step, value)} of the last value of every scalar in the run's summaries.

  `<workdir>/final_metrics.json` ({name: value}) is used when the trainer wrote one; otherwise the
  TensorBoard event files are read.
  """
  path = epath.Path(workdir) / 'final_metrics.json'
  if path.exists():
    values = json.loads(path.read_text(encoding='utf-8'))
    step = int(values.get('final_step', -1))
    return {k: (step, float(v)) for k, v in values.items() if isinstance(v, (int, float))}
  files = sorted(os.fspath(p) for p in epath.Path(workdir).glob('events.out.tfevents.*'))
  if not files:
    return {}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for event_file in files:
    for record in tf.data.TFRecordDataset(event_file):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.HasField('tensor'):
          if value.metadata.plugin_data.plugin_name not in ('scalars', ''):
            continue
          array = tf.make_ndarray(value.tensor)
          if array.ndim or not np.issubdtype(array.dtype, np.number):
            continue
          number = float(array)
        elif value.HasField('simple_value'):
          number = float(value.simple_value)
        else:
          continue
        if value.tag not in out or event.step >= out[value.tag][0]:
          out[value.tag] = (int(event.step), number)
  return out


def model_card(config: ModelConfig, run_config: Mapping[str, Any],
               metrics: Mapping[str, Tuple[int, float]], step: int,
               tokenizer_name: str, task: str = 'pretrain') -> str:
  """README.md of the exported folder (Hub model card with YAML front matter)."""
  data = run_config.get('data', {})
  optimizer = run_config.get('optimizer', {})
  params_line = (f'{config.num_text_layers}+{config.num_visual_layers}+{config.num_cross_layers}'
                 f' layers (text+visual+cross), hidden {config.hidden_size}, {config.num_heads} '
                 f'heads, MLP {config.mlp_dim}, vocabulary {config.vocab_size} rows '
                 f'({config.word_vocab_size} words + concepts)')
  lines = [
      '---', 'library_name: mvp-jax', 'tags:', '- vision-language', '- mvptr', '- jax', '- flax',
      'pipeline_tag: feature-extraction', '---', '',
      '# MVPTR (mvp-jax)', '',
      'A multi-stage vision-language pre-trained model (MVPTR: words and phrase concepts on the '
      'text side, region features and object tags on the visual side) trained with '
      'mvp-jax, a JAX/Flax reimplementation of the authors\' PyTorch code.', '',
      f'- Architecture: {params_line}.',
      f'- Region features: {config.region_feature_dim}-d, image LayerNorm '
      f'{"on" if config.use_region_layernorm else "off"}.',
      f'- Checkpoint step: {step}.', '',
      '## Training', '',
      '| setting | value |', '|---|---|',
  ]
  rows = [('data', data.get('kind', '?') + (f" ({data['directory']})" if data.get('directory')
                                            else '')),
          ('lengths (Ls / P / T / R)', '/'.join(str(data.get(k, '?')) for k in (
              'max_seq_length', 'max_phrases', 'max_tag_length', 'max_img_seq_length'))),
          ('batch size', run_config.get('batch_size', '?')),
          ('total steps', run_config.get('total_steps', '?')),
          ('schedule', run_config.get('schedule', '?')),
          ('learning rate', optimizer.get('lr', '?')),
          ('warmup steps', optimizer.get('warmup_steps', '?')),
          ('loss weights', json.dumps(run_config.get('loss_weights', {}))),
          ('init_from', run_config.get('init_from') or '(random)')]
  if data.get('kind') == 'shapesworld':
    rows.append(('ShapesWorld', json.dumps(data.get('shapesworld', {}))))
  lines += [f'| {k} | {v} |' for k, v in rows]
  evaluation = {k: v for k, v in metrics.items()
                if not k.startswith('train/') and k not in _HIDDEN_METRICS}
  lines += ['', '## Evaluation (last logged values)', '']
  if evaluation:
    lines += ['| metric | step | value |', '|---|---|---|']
    lines += [f'| {k} | {s} | {v:.4f} |' for k, (s, v) in sorted(evaluation.items())]
  else:
    lines.append('No evaluation metrics were found in the run.')
  if 'train/loss' in metrics:
    s, v = metrics['train/loss']
    lines += ['', f'Final training loss: {v:.4f} (step {s}).']
  lines += [
      '', '## Files', '',
      "- `config.json`: the authors' BertConfig fields and an `mvp_jax` section (exact config).",
      "- `model.safetensors`: float32 weights with the authors' PyTorch names "
      f'(`{weights.ARCHITECTURES[task]}`).',
      f'- `{tokenizer_name}`, `{run_dir.CONCEPTS_FILE}`: the tokenizer and the phrase-concept '
      'vocabulary.',
      f'- `{TEXT_ENCODER_DIR}/`: the text encoder as a `transformers.BertModel`. Its pooler was '
      'trained on the cross-modal [CLS]; use `last_hidden_state` for text-only features.',
      '', '## Usage', '', '```python',
      'import mvp_jax',
      'from mvp_jax import inference',
      "config, params = mvp_jax.load_checkpoint('path/to/folder')",
      "predictor = inference.Predictor.load('path/to/folder')",
      "predictor.fill_mask(image, 'a red [MASK] left of a blue square')",
      '```', '']
  return '\n'.join(lines)


def export(workdir: str, out_dir: str, *, dataset_dir: Optional[str] = None,
           step: Optional[int] = None, push_to_hub: Optional[str] = None,
           private: bool = False, text_encoder: bool = True) -> str:
  """Writes the Hub folder of a training run (see the module docstring); returns out_dir.

  Args:
    workdir: the run (holds model_config.json, config.json, checkpoints/).
    out_dir: the folder to write (created; existing files are overwritten).
    dataset_dir: where vocab.txt|*.model and id2phrase.json are (default: the run's dataset).
    step: checkpoint step (default: the latest).
    push_to_hub: a Hub repo id ('user/name') to create and upload the folder to.
    private: create the Hub repo private.
    text_encoder: also write `text_encoder/` (a transformers BertModel).
  """
  source = weights.read(_run_path(workdir, step))
  config, params, _ = api.load_checkpoint_with_report(source)
  task = 'pretrain' if source.task == 'backbone' else source.task
  run_config = run_dir.read_run_config(workdir)
  directory = run_dir.find_dataset_dir(workdir, dataset_dir)
  data = run_config.get('data', {})
  lengths = {k: data[k] for k in ('max_seq_length', 'max_phrases', 'max_tag_length',
                                  'max_img_seq_length') if k in data}
  step = int(source.info['step'])
  weights.export(params, config, out_dir, task=task, vocab_dir=directory, fields={
      'lengths': lengths, 'data': data, 'step': step,
      'source_workdir': workdir if '://' in workdir else os.path.abspath(workdir)})
  tokenizer_path = run_dir.tokenizer_file(directory)
  if text_encoder:
    hf_bert.export_text_encoder(params, config, os.path.join(out_dir, TEXT_ENCODER_DIR),
                                tokenizer_path)
  with open(os.path.join(out_dir, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(model_card(config, run_config, read_metrics(workdir), step,
                       os.path.basename(tokenizer_path), task))
  if push_to_hub:
    upload(out_dir, push_to_hub, private=private)
  return out_dir


def export_text_encoder(workdir: str, out_dir: str, *, dataset_dir: Optional[str] = None,
                        step: Optional[int] = None) -> str:
  """Only the run's text encoder, as a `transformers.BertModel` folder (`hf_bert`)."""
  config, params = api.load_checkpoint(_run_path(workdir, step))
  directory = run_dir.find_dataset_dir(workdir, dataset_dir)
  return hf_bert.export_text_encoder(params, config, out_dir, run_dir.tokenizer_file(directory))


def _run_path(workdir: str, step: Optional[int]) -> str:
  return workdir if step is None else os.path.join(workdir, run_dir.CHECKPOINTS_DIR, str(step))


def upload(out_dir: str, repo_id: str, private: bool = False, hub_api=None) -> Any:
  """Creates the Hub model repo `repo_id` (if needed) and uploads `out_dir` to it.

  Needs a token (`huggingface-cli login` or HF_TOKEN). Returns the upload's commit info.
  """
  if hub_api is None:
    from huggingface_hub import HfApi  # pylint: disable=g-import-not-at-top  (optional dep)
    hub_api = HfApi()
  hub_api.create_repo(repo_id=repo_id, repo_type='model', private=private, exist_ok=True)
  return hub_api.upload_folder(folder_path=out_dir, repo_id=repo_id, repo_type='model',
                           commit_message='Upload MVPTR exported by mvp-jax')


def main(argv) -> None:
  del argv
  values = flags.FLAGS
  if values.text_encoder_only:
    print(export_text_encoder(values.workdir, values.out, dataset_dir=values.dataset_dir,
                              step=values.step))
    return
  out = export(values.workdir, values.out, dataset_dir=values.dataset_dir, step=values.step,
               push_to_hub=values.push_to_hub, private=values.private,
               text_encoder=values.text_encoder)
  for name in sorted(os.listdir(out)):
    print(os.path.join(out, name))
  if values.push_to_hub:
    print(f'Uploaded to https://huggingface.co/{values.push_to_hub}')


def define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', None, 'The training run to export (its workdir, or one '
                      'checkpoint folder WORKDIR/checkpoints/STEP).', flag_values=values)
  flags.DEFINE_string('out', None, 'Output folder of the Hub layout (config.json, '
                      'model.safetensors, tokenizer, concepts, README.md).', flag_values=values)
  flags.DEFINE_string('dataset_dir', None, 'Dataset folder with the vocabularies (default: the '
                      "one recorded in the run's config).", flag_values=values)
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).',
                       flag_values=values)
  flags.DEFINE_string('push_to_hub', None, 'Also upload the folder to this Hub repo id '
                      '(user/name); needs `huggingface-cli login` or HF_TOKEN.',
                      flag_values=values)
  flags.DEFINE_bool('private', False, 'Create the Hub repo private (with --push_to_hub).',
                    flag_values=values)
  flags.DEFINE_bool('text_encoder', True, 'Also export text_encoder/ as a transformers '
                    'BertModel folder.', flag_values=values)
  flags.DEFINE_bool('text_encoder_only', False, 'Write only the text encoder (a transformers '
                    'BertModel folder) to --out.', flag_values=values)
  flags.mark_flags_as_required(['workdir', 'out'], flag_values=values)


def run() -> None:
  """`python -m mvp_jax.export_hf` and the `mvp-export` console script."""
  cli.exit_on_help('python -m mvp_jax.export_hf', __doc__, define_flags)
  define_flags(flags.FLAGS)
  app.run(main)


if __name__ == '__main__':
  run()
