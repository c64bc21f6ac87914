r"""Hugging Face BERT <-> MVPTR: seed a model from a BERT folder; export the text encoder.

Seeding (`seed_from_bert`, what `mvp_jax.weights.load` does with a HF BERT folder, i.e.
`--config.init_from=/path/bert-base-uncased`): a folder with `config.json` and `model.safetensors` /
`pytorch_model.bin` of a `BertModel` or `BertForPreTraining` seeds a freshly initialised MVPTR:
- Transformer layers: `layer_map` chooses which BERT layers seed the text, visual and cross-modal
  encoders (K = BERT depth; t, v, c = our depths):
    'split'  (default) text <- 0..t-1, visual <- 0..v-1, cross <- t..t+c-1. With BERT-base and the
             base config: text and visual <- 0..5, cross <- 6..11, i.e. the uni-modal encoders see
             the lower BERT, the cross encoder continues where the text encoder stops.
    'bottom' every encoder <- 0..depth-1.
    explicit 'text=0-5;visual=0,1,2,3,4,5;cross=6-11' (or a dict {'text': [...], ...}).
- Embeddings: BERT word rows are copied into our first rows (`word_rows='by_id'`, the authors'
  setting: our tokenizer is BERT's), or matched by token string with BERT's `vocab.txt`
  (`word_rows='by_token'`, e.g. a compact ShapesWorld vocabulary; `weights.load` uses it whenever
  the run's vocabularies are given and the folder has a vocab.txt). Position, segment and the
  embedding LayerNorm are copied (positions beyond BERT's table stay fresh).
- Concept rows (>= word_vocab_size, spec §5.3) start as the mean of the embeddings of their words'
  pieces under the dataset tokenizer (when the dataset's vocabularies are given).
- The pooler is copied. Both MLM decoders start as the first word_vocab_size rows of the new table
  (as the authors' `tie_weights`, spec §1.7); with a `BertForPreTraining` checkpoint the MLM head's
  transform, LayerNorm and bias are copied too. The region projection, contrastive projections,
  ITM and concept-head transform keep their fresh initialisation.

Export (`export_text_encoder`): our embeddings + text encoder + pooler as a standard `transformers`
`BertModel` folder (`config.json`, `model.safetensors`, and `vocab.txt` when the tokenizer is
WordPiece). Note: our pooler is trained on the *cross-modal* [CLS] (spec §1.5), so the exported
`pooler_output` of a text-only input is not a trained sentence embedding; use `last_hidden_state`
(or the ITC embedding of `mvp_jax.inference`). The embedding table includes the concept rows.

  python -m mvp_jax.export_hf --workdir=/tmp/mvp_tiny --out=/tmp/text_bert --text_encoder_only
"""

import json
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from safetensors.numpy import save_file

from mvp_jax import convert
from mvp_jax import vocab_padding
from mvp_jax.config import ModelConfig

Params = Dict[str, Any]
Flat = Dict[Tuple[str, ...], np.ndarray]
LayerMap = Union[str, Mapping[str, Sequence[int]]]

# Our encoder names in layer maps -> (authors' torch encoder, ModelConfig depth field).
ENCODERS = {'text': ('txt_encoder', 'num_text_layers'),
            'visual': ('vis_encoder', 'num_visual_layers'),
            'cross': ('mul_encoder', 'num_cross_layers')}
_WORDS = 'bert.embeddings.word_embeddings.weight'
_POSITIONS = 'bert.embeddings.position_embeddings.weight'
_SEGMENTS = 'bert.embeddings.token_type_embeddings.weight'


class BertImportError(ValueError):
  """The BERT checkpoint does not fit the MVPTR config (widths, heads, layers, vocabulary)."""


def resolve_layer_map(layer_map: LayerMap, num_bert_layers: int,
                      config: ModelConfig) -> Dict[str, List[int]]:
  """BERT layer indices seeding each encoder: {'text': [...], 'visual': [...], 'cross': [...]}.

  Args:
    layer_map: 'split', 'bottom', 'text=0-5;visual=0-5;cross=6-11' or a dict of index lists.
    num_bert_layers: depth K of the BERT checkpoint.
    config: gives the depth of each encoder; list i seeds layer i.
  """
  depth = {name: getattr(config, field) for name, (_, field) in ENCODERS.items()}
  if isinstance(layer_map, str) and layer_map == 'split':
    resolved = {'text': list(range(depth['text'])), 'visual': list(range(depth['visual'])),
                'cross': list(range(depth['text'], depth['text'] + depth['cross']))}
  elif isinstance(layer_map, str) and layer_map == 'bottom':
    resolved = {name: list(range(d)) for name, d in depth.items()}
  elif isinstance(layer_map, str):
    resolved = _parse_layer_map(layer_map)
  else:
    resolved = {k: [int(i) for i in v] for k, v in dict(layer_map).items()}
  unknown = sorted(set(resolved) - set(ENCODERS))
  if unknown or set(resolved) != set(ENCODERS):
    raise BertImportError(f'layer_map needs exactly the encoders {sorted(ENCODERS)}, got '
                          f'{sorted(resolved)}.')
  for name, layers in resolved.items():
    if len(layers) != depth[name]:
      raise BertImportError(f'layer_map gives {len(layers)} BERT layers for the {name} encoder, '
                            f'which has {depth[name]} layers ({ENCODERS[name][1]}).')
    bad = [i for i in layers if not 0 <= i < num_bert_layers]
    if bad:
      raise BertImportError(f'layer_map: {name} uses BERT layers {bad}, but the checkpoint has '
                            f'only {num_bert_layers} layers (0..{num_bert_layers - 1}).')
  return resolved


def _parse_layer_map(text: str) -> Dict[str, List[int]]:
  """'text=0-5;visual=0,1;cross=6-11' -> dict of index lists."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(';'))):
    if '=' not in part:
      raise BertImportError(f"layer_map {text!r}: expected 'split', 'bottom' or "
                            "'text=0-5;visual=0-5;cross=6-11'.")
    name, spec = (s.strip() for s in part.split('=', 1))
    layers = []
    for item in filter(None, (s.strip() for s in spec.split(','))):
      match = re.fullmatch(r'(\d+)(?:-(\d+))?', item)
      if not match:
        raise BertImportError(f'layer_map {text!r}: bad layer range {item!r}.')
      start, end = int(match.group(1)), int(match.group(2) or match.group(1))
      layers.extend(range(start, end + 1))
    out[name] = layers
  return out


_BERT_LAYER = re.compile(r'^encoder\.layer\.(\d+)\.(.*)$')
_TORCH_ENCODERS = tuple(torch_encoder for torch_encoder, _ in ENCODERS.values())


def is_bert_state(state: Mapping[str, Any]) -> bool:
  """Whether a state dict has Hugging Face BERT names (`[bert.]encoder.layer.N.*`)."""
  return any(re.match(r'^(bert\.)?encoder\.layer\.\d+\.', k) for k in state)


def bert_to_mvp_names(state: Mapping[str, Any],
                      target: Union[str, Sequence[str]] = 'txt_encoder',
                      layers: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """Renames a Hugging Face BERT state dict to the authors' MVPTR names (values untouched).

  `embeddings.*` becomes `bert.embeddings.*`, `pooler.*` becomes `bert.pooler.*` and
  `encoder.layer.{i}.*` becomes `bert.{target}.layer.{k}.*`. A `bert.` prefix on the input
  (`BertForPreTraining`) is accepted, `cls.*` heads keep their names (MVPTR uses the same ones)
  and everything else (`position_ids` / `token_type_ids` buffers) is dropped.

  Args:
    state: {HF name: tensor or array}.
    target: `txt_encoder`, `vis_encoder` or `mul_encoder`, or several of them, each receiving a
      copy of the selected layers.
    layers: HF layer indices feeding target layers 0, 1, ... (default: every layer, in order).

  Returns:
    {MVPTR torch name: value}, ready for `convert.torch_to_params` with a matching entry table.
  """
  targets = (target,) if isinstance(target, str) else tuple(target)
  if not targets or any(t not in _TORCH_ENCODERS for t in targets):
    raise ValueError(f'target must be among {sorted(_TORCH_ENCODERS)}, got {target!r}.')
  state = {k[len('bert.'):] if k.startswith('bert.') else k: v for k, v in state.items()}
  present = sorted({int(m.group(1)) for k in state for m in [_BERT_LAYER.match(k)] if m})
  layers = present if layers is None else list(layers)
  absent = sorted(set(layers) - set(present))
  if absent:
    raise convert.ConversionError(
        f'BERT layers {absent} are not in the state dict (it has {present}).')
  source_to_target = {source: index for index, source in enumerate(layers)}
  renamed = {}
  for name, value in state.items():
    match = _BERT_LAYER.match(name)
    if match:
      index = source_to_target.get(int(match.group(1)))
      if index is not None:
        for t in targets:
          renamed[f'bert.{t}.layer.{index}.{match.group(2)}'] = value
    elif name.startswith(('embeddings.', 'pooler.')) and not name.endswith('_ids'):
      renamed[f'bert.{name}'] = value
    elif name.startswith('cls.'):
      renamed[name] = value
  return renamed


def read_bert(directory: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(state dict without a `bert.` prefix, LayerNorm gamma/beta renamed; its config.json)."""
  config_path = os.path.join(directory, 'config.json')
  if not os.path.isdir(directory) or not os.path.exists(config_path):
    raise FileNotFoundError(f'{directory}: not a Hugging Face BERT folder (needs config.json and '
                            'model.safetensors or pytorch_model.bin).')
  with open(config_path, encoding='utf-8') as f:
    bert_config = json.load(f)
  state = {}
  for name, value in convert.load_state_dict(directory).items():
    name = name[len('bert.'):] if name.startswith('bert.') else name
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', name)
    state[re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)] = value
  if 'embeddings.word_embeddings.weight' not in state:
    raise BertImportError(f'{directory}: no embeddings.word_embeddings.weight; is it a BERT?')
  return state, bert_config


def _bert_vocab(directory: str) -> Dict[str, int]:
  path = os.path.join(directory, 'vocab.txt')
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: word_rows='by_token' needs BERT's vocab.txt.")
  with open(path, encoding='utf-8') as f:
    return {line.rstrip('\n'): i for i, line in enumerate(f)}


def seed_from_bert(bert_dir: str, values: Flat, config: ModelConfig, *, vocab_dir=None,
                   layer_map: LayerMap = 'split', word_rows: Optional[str] = None
                   ) -> Tuple[Flat, Dict[str, Any]]:
  """The parameters a BERT folder seeds (see the module docstring) and a report.

  Args:
    bert_dir: folder with config.json and model.safetensors / pytorch_model.bin.
    values: {our path: float32 numpy} current values of the model being initialised (its fresh
      init): tables copied in part keep their other rows.
    config: the MVPTR model config (hidden size, heads and MLP width must equal BERT's).
    vocab_dir: the run's dataset folder (tokenizer + id2phrase.json): concept rows start as the
      mean of their words, and with it `word_rows` defaults to 'by_token'.
    layer_map: which BERT layers seed which encoder (`resolve_layer_map`).
    word_rows: 'by_id' (row i <- BERT row i) or 'by_token' (match token strings); default
      'by_token' when vocab_dir is given and BERT has a vocab.txt, else 'by_id'.

  Returns:
    ({our path: array} of every parameter set from BERT, a subset of `values`' paths; report).
  """
  tokenizer = concept_vocab = None
  if vocab_dir:
    from input_pipeline import storage  # pylint: disable=g-import-not-at-top  (TensorFlow)
    tokenizer, concept_vocab = storage.load_vocabularies(vocab_dir)
  if word_rows is None:
    has_vocab = os.path.exists(os.path.join(bert_dir, 'vocab.txt'))
    word_rows = 'by_token' if tokenizer is not None and has_vocab else 'by_id'
  state, bert_config = read_bert(bert_dir)
  words = state['embeddings.word_embeddings.weight']
  hidden = words.shape[1]
  heads = int(bert_config.get('num_attention_heads', config.num_heads))
  layer_ids = sorted({int(m.group(1)) for k in state
                      for m in [re.match(r'encoder\.layer\.(\d+)\.', k)] if m})
  mlp = state['encoder.layer.0.intermediate.dense.weight'].shape[0] if layer_ids else None
  mismatch = [f'{name}: BERT {theirs}, config {ours}' for name, theirs, ours in (
      ('hidden_size', hidden, config.hidden_size), ('num_heads', heads, config.num_heads),
      ('mlp_dim', mlp, config.mlp_dim)) if theirs != ours]
  if mismatch:
    raise BertImportError(f'{bert_dir} does not fit the model config: {"; ".join(mismatch)}.')
  layers = resolve_layer_map(layer_map, len(layer_ids), config)

  renamed = {}
  for name, (torch_encoder, _) in ENCODERS.items():
    renamed.update(bert_to_mvp_names(state, torch_encoder, layers[name]))
  # Tables copied in part (below); cls.* handled separately.
  tables = {k: renamed.pop(k) for k in (_WORDS, _POSITIONS, _SEGMENTS)}
  heads_state = {k: renamed.pop(k) for k in list(renamed) if k.startswith('cls.')}
  entries = [e for e in convert.backbone_entries(config)
             if e.torch_name in renamed and e.path in values]
  out = {e.path: convert.to_ours(np.asarray(renamed[e.torch_name], np.float32), e, config)
         for e in entries}

  embeddings = ('backbone', 'embeddings')
  table = np.array(values[embeddings + ('word_embeddings', 'embedding')], np.float32)
  row_source = _word_row_sources(words.shape[0], config, tokenizer, word_rows, bert_dir)
  ours_rows = np.array(sorted(row_source), np.int64)
  theirs_rows = np.array([row_source[i] for i in ours_rows], np.int64)
  table[ours_rows] = words[theirs_rows]
  concept_rows = _mean_word_rows(table, config, tokenizer, concept_vocab)
  out[embeddings + ('word_embeddings', 'embedding')] = table
  for key, name in ((('position_embeddings', 'embedding'), _POSITIONS),
                    (('token_type_embeddings', 'embedding'), _SEGMENTS)):
    ours, theirs = np.array(values[embeddings + key], np.float32), tables[name]
    n = min(len(ours), len(theirs))
    ours[:n] = theirs[:n]
    out[embeddings + key] = ours

  for head in ('mlm_head', 'concept_head'):
    if (head, 'decoder') in values:
      out[(head, 'decoder')] = vocab_padding.fit_rows(  # zero vocabulary padding rows
          table[:config.word_vocab_size], config.padded_word_vocab_size)
  mlm_head_copied = ('mlm_head', 'bias') in values and _copy_mlm_head(
      out, heads_state, config, ours_rows, theirs_rows)
  report = {
      'bert_dir': os.path.abspath(bert_dir), 'bert_layers': len(layer_ids),
      'layer_map': layers, 'word_rows': word_rows, 'words_copied': int(len(ours_rows)),
      'concept_rows_from_words': concept_rows,
      'positions_copied': int(min(config.max_position_embeddings, len(tables[_POSITIONS]))),
      'mlm_head_copied': mlm_head_copied}
  return out, report


def _word_row_sources(num_bert_rows: int, config: ModelConfig, tokenizer, word_rows: str,
                      bert_dir: str) -> Dict[int, int]:
  """{our word row: BERT row} for the rows to copy."""
  if word_rows == 'by_id':
    if num_bert_rows > config.word_vocab_size:
      raise BertImportError(
          f'BERT has {num_bert_rows} word rows but the model has word_vocab_size '
          f"{config.word_vocab_size}: with another tokenizer use word_rows='by_token'.")
    return {i: i for i in range(num_bert_rows)}
  if word_rows == 'by_token':
    if tokenizer is None:
      raise BertImportError("word_rows='by_token' needs the dataset tokenizer.")
    vocab = _bert_vocab(bert_dir)
    sources = {}
    for i in range(min(tokenizer.vocab_size, config.word_vocab_size)):
      j = vocab.get(tokenizer.id_to_token(i))
      if j is not None and j < num_bert_rows:
        sources[i] = j
    return sources
  raise BertImportError(f"word_rows must be 'by_id' or 'by_token', got {word_rows!r}.")


def _mean_word_rows(table: np.ndarray, config: ModelConfig, tokenizer, concept_vocab) -> int:
  """Sets each new concept row to the mean of its words' piece rows; returns how many."""
  if concept_vocab is None:
    return 0
  if tokenizer is None:
    raise BertImportError('Concept rows need the dataset tokenizer to split their words.')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rows = [r for r in sorted(concept_vocab.id2phrase) if r >= config.word_vocab_size]
  too_big = [r for r in rows if r >= config.vocab_size]
  if too_big:
    raise BertImportError(f'Concept rows {too_big[:5]} exceed vocab_size {config.vocab_size}.')
  if not rows:
    return 0
  texts = [' '.join(concept_vocab.id2phrase[r]) for r in rows]
  pieces = tokenizer.tokenize(tf.constant(texts)).to_list()
  for row, ids in zip(rows, pieces):
    ids = [i for i in ids if i < config.word_vocab_size]
    if ids:
      table[row] = table[ids].mean(axis=0)
  return len(rows)


def _copy_mlm_head(flat, heads_state, config, ours_rows, theirs_rows) -> bool:
  """Copies a BertForPreTraining `cls.predictions` transform + bias into our MLM head."""
  prefix = 'cls.predictions.'
  needed = [prefix + n for n in ('transform.dense.weight', 'transform.dense.bias',
                                 'transform.LayerNorm.weight', 'transform.LayerNorm.bias',
                                 'bias')]
  if not all(n in heads_state for n in needed):
    return False
  flat[('mlm_head', 'transform', 'kernel')] = heads_state[needed[0]].T.copy()
  flat[('mlm_head', 'transform', 'bias')] = heads_state[needed[1]].copy()
  flat[('mlm_head', 'transform_layernorm', 'scale')] = heads_state[needed[2]].copy()
  flat[('mlm_head', 'transform_layernorm', 'bias')] = heads_state[needed[3]].copy()
  bias = np.zeros([config.padded_word_vocab_size], np.float32)
  bias[ours_rows] = heads_state[needed[4]][theirs_rows]
  flat[('mlm_head', 'bias')] = bias
  return True


# --- Export -----------------------------------------------------------------------------------

def text_encoder_state(params: Params, config: ModelConfig) -> Dict[str, np.ndarray]:
  """HF `BertModel` state dict of our embeddings, text encoder and pooler."""
  backbone = params['backbone'] if 'backbone' in params else params
  state = convert.params_to_torch({'backbone': backbone}, config,
                                  convert.backbone_entries(config))
  out = {}
  for name, value in state.items():
    match = re.match(r'^bert\.txt_encoder\.layer\.(\d+)\.(.*)$', name)
    if match:
      out[f'encoder.layer.{match.group(1)}.{match.group(2)}'] = value
    elif name.startswith(('bert.embeddings.', 'bert.pooler.')):
      out[name[len('bert.'):]] = value
  return out


def bert_config(config: ModelConfig, pad_token_id: int = 0) -> Dict[str, Any]:
  """`transformers.BertConfig` fields of the exported text encoder."""
  return {
      'architectures': ['BertModel'], 'model_type': 'bert',
      'vocab_size': config.vocab_size, 'hidden_size': config.hidden_size,
      'num_hidden_layers': config.num_text_layers, 'num_attention_heads': config.num_heads,
      'intermediate_size': config.mlp_dim, 'hidden_act': 'gelu',
      'hidden_dropout_prob': config.dropout_rate,
      'attention_probs_dropout_prob': config.attention_dropout_rate,
      'max_position_embeddings': config.max_position_embeddings,
      'type_vocab_size': config.type_vocab_size, 'initializer_range': config.initializer_range,
      'layer_norm_eps': config.layer_norm_eps, 'pad_token_id': pad_token_id,
      'position_embedding_type': 'absolute', 'torch_dtype': 'float32',
      'mvp_jax_note': ('Text encoder of an mvp-jax MVPTR model. The pooler was trained on the '
                       'cross-modal [CLS], not on text alone; rows >= '
                       f'{config.word_vocab_size} of the word table are phrase concepts.'),
  }


def export_text_encoder(params: Params, config: ModelConfig, out_dir: str,
                        tokenizer_file: Optional[str] = None, pad_token_id: int = 0) -> str:
  """Writes a `transformers.BertModel` folder (config.json, model.safetensors[, vocab.txt]).

  Load it with `transformers.BertModel.from_pretrained(out_dir)`; see the module docstring for
  what the pooler means. Returns out_dir.
  """
  os.makedirs(out_dir, exist_ok=True)
  save_file(text_encoder_state(params, config), os.path.join(out_dir, 'model.safetensors'),
            metadata={'format': 'pt'})
  with open(os.path.join(out_dir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(bert_config(config, pad_token_id), f, indent=1)
  if tokenizer_file and tokenizer_file.endswith('.txt'):
    shutil.copyfile(tokenizer_file, os.path.join(out_dir, 'vocab.txt'))
    with open(os.path.join(out_dir, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      json.dump({'tokenizer_class': 'BertTokenizer', 'do_lower_case': True}, f, indent=1)
  return out_dir
