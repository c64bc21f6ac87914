r"""Export a training run as a Hugging Face Hub folder, and load such a folder back.

  python -m mvp_jax.export_hf --workdir=/tmp/mvp_tiny --out=/tmp/mvp_tiny_hf \
      [--dataset_dir=DIR] [--step=N] [--push_to_hub=user/mvp-tiny [--private]]

The folder holds
  config.json         the authors' BertConfig-style fields (spec §1.1: `num_hidden_layers` is
                      twice the per-encoder depth, because their code builds each of the three
                      encoders from num_hidden_layers // 2) plus an `mvp_jax` section with our
                      exact ModelConfig, sequence lengths and data config, used to reload;
  model.safetensors   float32 weights under the authors' PyTorch names (spec §6);
  vocab.txt | *.model the tokenizer of the run's dataset, and id2phrase.json its concepts;
  text_encoder/       the text encoder as a standard `transformers.BertModel` (`hf_bert.py`);
  README.md           a model card built from the training config and the last evaluation metrics
                      (read from the run's TensorBoard event files).
`load_exported(folder)` returns (ModelConfig, params) equal to the run's.
"""

import dataclasses
import glob
import json
import os
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from mvp_jax import convert
from mvp_jax.config import ModelConfig

Params = Dict[str, Any]
FORMAT_VERSION = 1
MODEL_FILE = 'model.safetensors'
CONCEPTS_FILE = 'id2phrase.json'
TEXT_ENCODER_DIR = 'text_encoder'
_HIDDEN_METRICS = ('steps_per_sec', 'uptime')


def authors_config(config: ModelConfig) -> Dict[str, Any]:
  """The authors' BertConfig-style fields of `BiBertImgForPreTraining` (spec §1.1)."""
  depths = {config.num_text_layers, config.num_visual_layers, config.num_cross_layers}
  fields = {
      'architectures': ['BiBertImgForPreTraining'], 'model_type': 'bert',
      'vocab_size': config.vocab_size, 'only_word_size': config.word_vocab_size,
      'hidden_size': config.hidden_size,
      'num_hidden_layers': 2 * max(depths), 'num_attention_heads': config.num_heads,
      'intermediate_size': config.mlp_dim, 'hidden_act': 'gelu',
      'hidden_dropout_prob': config.dropout_rate,
      'attention_probs_dropout_prob': config.attention_dropout_rate,
      'max_position_embeddings': config.max_position_embeddings,
      'type_vocab_size': config.type_vocab_size, 'initializer_range': config.initializer_range,
      'layer_norm_eps': config.layer_norm_eps, 'img_feature_dim': config.region_feature_dim,
      'img_feature_type': 'faster_r-cnn', 'use_img_layernorm': int(config.use_region_layernorm),
      'img_layer_norm_eps': config.layer_norm_eps, 'num_contrast_classes': 2,
      'qa_answer_size': config.qa_num_answers, 'torchscript': True,
  }
  if len(depths) > 1:
    fields['_note'] = ('The three encoders have different depths (text %d, visual %d, cross %d); '
                       "the authors' code builds all three from num_hidden_layers // 2, so "
                       'only the mvp_jax section describes this model exactly.' % (
                           config.num_text_layers, config.num_visual_layers,
                           config.num_cross_layers))
  return fields


def read_run_config(workdir: str) -> Dict[str, Any]:
  """The run's `config.json` (the training ConfigDict as JSON); {} when absent."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def find_dataset_dir(workdir: str, dataset_dir: Optional[str] = None) -> str:
  """The dataset folder of a run: the argument, config data.directory, or <workdir>/<kind>."""
  data = read_run_config(workdir).get('data', {})
  candidates = [dataset_dir] if dataset_dir else [
      data.get('directory'), os.path.join(workdir, data.get('kind') or 'shapesworld'),
      os.path.join(workdir, 'shapesworld')]
  for candidate in filter(None, candidates):
    if os.path.exists(os.path.join(candidate, CONCEPTS_FILE)):
      return candidate
  raise FileNotFoundError(f'No dataset folder with {CONCEPTS_FILE} among {candidates}; pass '
                          '--dataset_dir (the folder holding vocab.txt and id2phrase.json).')


def tokenizer_file(directory: str) -> str:
  """The tokenizer file (vocab.txt or one *.model) of a dataset or exported folder."""
  names = [n for n in sorted(os.listdir(directory)) if n == 'vocab.txt' or n.endswith('.model')]
  if len(names) != 1:
    raise FileNotFoundError(f'{directory}: expected one tokenizer file (vocab.txt or *.model), '
                            f'found {names}.')
  return os.path.join(directory, names[0])


def read_metrics(workdir: str) -> Dict[str, Tuple[int, float]]:
  """{tag: (step, value)} of the last value of every scalar in the run's summaries.

  `<workdir>/final_metrics.json` ({name: value}) is used when the trainer wrote one; otherwise the
  TensorBoard event files are read.
  """
  path = os.path.join(workdir, 'final_metrics.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      values = json.load(f)
    step = int(values.get('final_step', -1))
    return {k: (step, float(v)) for k, v in values.items() if isinstance(v, (int, float))}
  files = sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*')))
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
               tokenizer_name: str) -> str:
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
      '(`BiBertImgForPreTraining`).',
      f'- `{tokenizer_name}`, `{CONCEPTS_FILE}`: the tokenizer and the phrase-concept vocabulary.',
      f'- `{TEXT_ENCODER_DIR}/`: the text encoder as a `transformers.BertModel`. Its pooler was '
      'trained on the cross-modal [CLS]; use `last_hidden_state` for text-only features.',
      '', '## Usage', '', '```python',
      'from mvp_jax import export_hf, inference',
      "config, params = export_hf.load_exported('path/to/folder')",
      "predictor = inference.Predictor.load('path/to/folder')",
      "predictor.fill_mask(image, 'a red [MASK] left of a blue square')",
      '```', '']
  return '\n'.join(lines)


def _entries_for(params: Mapping[str, Any], config: ModelConfig):
  """The conversion table covering the run's parameters (pre-training model or backbone)."""
  entries = [e for e in convert.pretraining_entries(config) if e.path[0] in params]
  covered = {e.path[0] for e in entries}
  extra = sorted(set(params) - covered)
  if extra:
    raise convert.ConversionError(
        f'The run has parameters {extra} outside the pre-training model; export_hf exports '
        'pre-training runs (backbone, mlm_head, concept_head, itm_head, qa_head).')
  return entries


def export(workdir: str, out_dir: str, *, dataset_dir: Optional[str] = None,
           step: Optional[int] = None, push_to_hub: Optional[str] = None,
           private: bool = False, text_encoder: bool = True) -> str:
  """Writes the Hub folder of a training run (see the module docstring); returns out_dir.

  Args:
    workdir: the run (holds model_config.json, config.json, checkpoints/).
    out_dir: the folder to write (created; existing files are overwritten).
    dataset_dir: where vocab.txt|*.model and id2phrase.json are (default: `find_dataset_dir`).
    step: checkpoint step (default: the latest).
    push_to_hub: a Hub repo id ('user/name') to create and upload the folder to.
    private: create the Hub repo private.
    text_encoder: also write `text_encoder/` (a transformers BertModel).
  """
  from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from mvp_jax import hf_bert  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  config, params, step = checkpointing.load_trained(workdir, step)
  run_config = read_run_config(workdir)
  directory = find_dataset_dir(workdir, dataset_dir)
  tokenizer_path = tokenizer_file(directory)
  os.makedirs(out_dir, exist_ok=True)

  state = convert.params_to_torch(params, config, _entries_for(params, config))
  save_file(state, os.path.join(out_dir, MODEL_FILE), metadata={'format': 'pt'})
  tokenizer_name = 'vocab.txt' if tokenizer_path.endswith('.txt') else os.path.basename(
      tokenizer_path)
  shutil.copyfile(tokenizer_path, os.path.join(out_dir, tokenizer_name))
  shutil.copyfile(os.path.join(directory, CONCEPTS_FILE), os.path.join(out_dir, CONCEPTS_FILE))
  data = run_config.get('data', {})
  lengths = {k: data[k] for k in ('max_seq_length', 'max_phrases', 'max_tag_length',
                                  'max_img_seq_length') if k in data}
  fields = authors_config(config)
  fields['mvp_jax'] = {
      'format_version': FORMAT_VERSION, 'model_config': dataclasses.asdict(config),
      'lengths': lengths, 'data': data, 'step': int(step), 'tokenizer_file': tokenizer_name,
      'concepts_file': CONCEPTS_FILE, 'source_workdir': os.path.abspath(workdir)}
  with open(os.path.join(out_dir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(fields, f, indent=1)
  if text_encoder:
    hf_bert.export_text_encoder(params, config, os.path.join(out_dir, TEXT_ENCODER_DIR),
                                tokenizer_path)
  with open(os.path.join(out_dir, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(model_card(config, run_config, read_metrics(workdir), int(step), tokenizer_name))
  if push_to_hub:
    upload(out_dir, push_to_hub, private=private)
  return out_dir


def upload(out_dir: str, repo_id: str, private: bool = False, api=None) -> Any:
  """Creates the Hub model repo `repo_id` (if needed) and uploads `out_dir` to it.

  Needs a token (`huggingface-cli login` or HF_TOKEN). Returns the upload's commit info.
  """
  if api is None:
    from huggingface_hub import HfApi  # pylint: disable=g-import-not-at-top
    api = HfApi()
  api.create_repo(repo_id=repo_id, repo_type='model', private=private, exist_ok=True)
  return api.upload_folder(folder_path=out_dir, repo_id=repo_id, repo_type='model',
                           commit_message='Upload MVPTR exported by mvp-jax')


def read_exported_config(directory: str) -> Dict[str, Any]:
  """The `config.json` of an exported (or authors') folder."""
  path = os.path.join(directory, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: {directory} is not an exported MVPTR folder.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def load_exported(directory: str) -> Tuple[ModelConfig, Params]:
  """(ModelConfig, params) of an exported folder (or an authors' folder with a BertConfig).

  With an `mvp_jax` section the config is restored exactly; otherwise it is inferred from the
  tensor shapes, with `num_attention_heads` from config.json. The backbone must be complete; the
  heads present are loaded (a pre-training head is either whole or absent).
  """
  fields = read_exported_config(directory)
  state = convert.load_state_dict(os.path.join(directory, MODEL_FILE)
                                  if os.path.exists(os.path.join(directory, MODEL_FILE))
                                  else directory)
  if 'mvp_jax' in fields:
    config = ModelConfig.from_dict(fields['mvp_jax']['model_config'])
  else:
    overrides = {}
    if 'num_attention_heads' in fields:
      overrides['num_heads'] = int(fields['num_attention_heads'])
    config = convert.infer_config(state, **overrides)
  backbone = convert.backbone_entries(config)
  missing = [e.torch_name for e in backbone if e.torch_name not in state]
  if missing:
    raise convert.ConversionError(f'{directory}: backbone tensors {missing[:8]} are missing.')
  # Heads are optional (an imported VQA or retrieval checkpoint has no MLM / ITM head).
  entries = [e for e in convert.pretraining_entries(config) if e.torch_name in state]
  return config, convert.torch_to_params(state, config, entries)


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FLAGS
  out = export(values.workdir, values.out, dataset_dir=values.dataset_dir, step=values.step,
               push_to_hub=values.push_to_hub, private=values.private,
               text_encoder=values.text_encoder)
  for name in sorted(os.listdir(out)):
    print(os.path.join(out, name))
  if values.push_to_hub:
    print(f'Uploaded to https://huggingface.co/{values.push_to_hub}')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string('workdir', None, 'The training run to export.')
  absl_flags.DEFINE_string('out', None, 'Output folder.')
  absl_flags.DEFINE_string('dataset_dir', None, 'Dataset folder with the vocabularies.')
  absl_flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
  absl_flags.DEFINE_string('push_to_hub', None, 'Hub repo id to upload to (user/name).')
  absl_flags.DEFINE_bool('private', False, 'Create the Hub repo private.')
  absl_flags.DEFINE_bool('text_encoder', True, 'Also export text_encoder/ as a BertModel.')
  absl_flags.mark_flags_as_required(['workdir', 'out'])
  app.run(_main)
