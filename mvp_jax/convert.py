"""Checkpoint conversion between the authors' PyTorch state dicts and mvp-jax parameters.

Both directions use one table of (torch name, our parameter path, layout) built from the model
config (spec §6, §1.10): PyTorch `Linear.weight [out, in]` becomes a Dense kernel `[in, out]`,
q/k/v kernels are reshaped to `[hidden, heads, head_dim]` (head h owns outputs 64h..64h+63), the
attention output kernel to `[heads, head_dim, hidden]`, LayerNorm `weight` becomes `scale`, and
embeddings, decoders and the `txt_proj`/`vis_proj` matrices are copied as they are. The word
table, the MLM / concept decoders and their biases have the authors' row counts on the torch side
and the model's padded ones on ours (`ModelConfig.vocab_multiple`): `Entry.rows` records both and
`vocab_padding.fit_rows` pads on the way in and cuts the (zero) padding rows on the way out.

`load_state_dict` reads `.safetensors` (no torch needed), `.npz` and `.bin`/`.pt` (torch, an
optional dependency, is imported only then). Weights are cast to float32 (released checkpoints may be fp16, spec §1.9).
"""

import dataclasses
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from input_pipeline import optional
from mvp_jax import model as model_lib
from mvp_jax import vocab_padding
from mvp_jax.config import ModelConfig

Params = Dict[str, Any]

# How a tensor is laid out on each side.
COPY = 'copy'            # same array
LINEAR = 'linear'        # torch [out, in] <-> kernel [in, out]
QKV = 'qkv'              # torch [H, H] <-> [H, heads, head_dim]; bias [H] <-> [heads, head_dim]
ATTN_OUT = 'attn_out'    # torch [H, H] <-> [heads, head_dim, H]

_ENCODERS = (('txt_encoder', 'text_encoder', 'num_text_layers'),
             ('vis_encoder', 'visual_encoder', 'num_visual_layers'),
             ('mul_encoder', 'cross_encoder', 'num_cross_layers'))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its torch name, our path, layout and, for vocabulary rows, (torch rows, ours)."""
  torch_name: str
  path: Tuple[str, ...]
  layout: str = COPY
  rows: Optional[Tuple[int, int]] = None


def _dense(torch_prefix: str, path: Tuple[str, ...], layout=LINEAR) -> List[Entry]:
  return [Entry(f'{torch_prefix}.weight', path + ('kernel',), layout),
          Entry(f'{torch_prefix}.bias', path + ('bias',), QKV if layout == QKV else COPY)]


def _layer_norm(torch_prefix: str, path: Tuple[str, ...]) -> List[Entry]:
  return [Entry(f'{torch_prefix}.weight', path + ('scale',)),
          Entry(f'{torch_prefix}.bias', path + ('bias',))]


def _prediction_head(torch_prefix: str, path: Tuple[str, ...],
                     rows: Optional[Tuple[int, int]] = None) -> List[Entry]:
  return (_dense(f'{torch_prefix}.transform.dense', path + ('transform',))
          + _layer_norm(f'{torch_prefix}.transform.LayerNorm', path + ('transform_layernorm',))
          + [Entry(f'{torch_prefix}.decoder.weight', path + ('decoder',), rows=rows),
             Entry(f'{torch_prefix}.bias', path + ('bias',), rows=rows)])


def _word_rows(config: ModelConfig) -> Tuple[int, int]:
  """(authors' rows, model rows) of the MLM / concept decoders."""
  return config.word_vocab_size, config.padded_word_vocab_size


def backbone_entries(config: ModelConfig, root: Tuple[str, ...] = ('backbone',)) -> List[Entry]:
  """The `bert.*` backbone plus `logit_scale` (our backbone owns the ITC temperature)."""
  entries = [
      Entry('logit_scale', root + ('logit_scale',)),
      Entry('bert.txt_proj', root + ('text_projection',)),
      Entry('bert.vis_proj', root + ('visual_projection',)),
  ]
  embeddings = root + ('embeddings',)
  entries.append(Entry('bert.embeddings.word_embeddings.weight',
                       embeddings + ('word_embeddings', 'embedding'),
                       rows=(config.vocab_size, config.padded_vocab_size)))
  for table in ('position_embeddings', 'token_type_embeddings'):
    entries.append(Entry(f'bert.embeddings.{table}.weight', embeddings + (table, 'embedding')))
  entries += _layer_norm('bert.embeddings.LayerNorm', embeddings + ('layernorm',))
  entries += _dense('bert.img_embedding', root + ('region_embedding', 'img_embedding'))
  if config.use_region_layernorm:
    entries += _layer_norm('bert.LayerNorm', root + ('region_embedding', 'img_layernorm'))
  for torch_encoder, our_encoder, depth_field in _ENCODERS:
    for i in range(getattr(config, depth_field)):
      t = f'bert.{torch_encoder}.layer.{i}'
      p = root + (our_encoder, f'layer_{i}')
      for proj in ('query', 'key', 'value'):
        entries += _dense(f'{t}.attention.self.{proj}', p + ('attention', proj), QKV)
      entries += _dense(f'{t}.attention.output.dense', p + ('attention', 'output'), ATTN_OUT)
      entries += _layer_norm(f'{t}.attention.output.LayerNorm', p + ('attention_layernorm',))
      entries += _dense(f'{t}.intermediate.dense', p + ('intermediate',))
      entries += _dense(f'{t}.output.dense', p + ('output',))
      entries += _layer_norm(f'{t}.output.LayerNorm', p + ('output_layernorm',))
  entries += _dense('bert.pooler.dense', root + ('pooler', 'dense'))
  return entries


def pretraining_entries(config: ModelConfig) -> List[Entry]:
  """`BiBertImgForPreTraining`: backbone, cls.predictions, cls.seq_relationship, half_mlm, qa."""
  entries = backbone_entries(config)
  entries += _prediction_head('cls.predictions', ('mlm_head',), _word_rows(config))
  entries += _dense('cls.seq_relationship', ('itm_head',))
  entries += _prediction_head('half_mlm', ('concept_head',), _word_rows(config))
  if config.qa_num_answers:
    entries += _dense('qa_head', ('qa_head',))
  return entries


def _to_ours(array: np.ndarray, layout: str, config: ModelConfig, is_kernel: bool) -> np.ndarray:
  heads, head_dim = config.num_heads, config.head_dim
  if layout == COPY:
    return array
  if layout == LINEAR:
    return array.T
  if layout == QKV:
    return array.T.reshape(-1, heads, head_dim) if is_kernel else array.reshape(heads, head_dim)
  if layout == ATTN_OUT:
    return array.T.reshape(heads, head_dim, -1)
  raise ValueError(f'Unknown layout {layout}.')


def _to_torch(array: np.ndarray, layout: str, is_kernel: bool) -> np.ndarray:
  if layout == COPY:
    return array
  if layout == LINEAR:
    return array.T
  if layout == QKV:
    return array.reshape(array.shape[0], -1).T if is_kernel else array.reshape(-1)
  if layout == ATTN_OUT:
    return array.reshape(-1, array.shape[-1]).T
  raise ValueError(f'Unknown layout {layout}.')


def _set(tree: Dict, path: Sequence[str], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: Sequence[str]):
  for key in path:
    tree = tree[key]
  return tree


class ConversionError(ValueError):
  """A state dict does not fit the model config (missing, unexpected or mis-shaped tensors)."""


def torch_to_params(state_dict: Mapping[str, Any], config: ModelConfig,
                    entries: Optional[Iterable[Entry]] = None,
                    ignore_unexpected: Sequence[str] = ()) -> Params:
  """Converts a PyTorch-named state dict into our nested parameter dict (float32 numpy).

  Args:
    state_dict: {torch name: array}; a `module.` prefix (DataParallel) is stripped.
    config: the model config the parameters are for.
    entries: the mapping table (default: the pre-training model).
    ignore_unexpected: regexes of torch names that may be present without a destination.

  Raises:
    ConversionError naming every missing, unexpected or mis-shaped tensor.
  """
  state = {re.sub(r'^module\.', '', k): np.asarray(to_numpy(v), np.float32)
           for k, v in state_dict.items()}
  entries = list(pretraining_entries(config) if entries is None else entries)
  missing = [e.torch_name for e in entries if e.torch_name not in state]
  used = {e.torch_name for e in entries}
  unexpected = [k for k in state if k not in used
                and not any(re.search(p, k) for p in ignore_unexpected)]
  problems = []
  if missing:
    problems.append(f'missing {len(missing)} tensors: {missing[:10]}')
  if unexpected:
    problems.append(f'unexpected {len(unexpected)} tensors: {unexpected[:10]}')
  if problems:
    raise ConversionError('State dict does not match the model config: ' + '; '.join(problems))
  params: Params = {}
  for entry in entries:
    _set(params, entry.path, to_ours(state[entry.torch_name], entry, config))
  _check_shapes(params, config, entries)
  return params


def params_to_torch(params: Mapping[str, Any], config: ModelConfig,
                    entries: Optional[Iterable[Entry]] = None) -> Dict[str, np.ndarray]:
  """Our parameters -> {torch name: float32 numpy array} loadable by the authors' code."""
  entries = list(pretraining_entries(config) if entries is None else entries)
  params = _unbox(params)
  out = {}
  for entry in entries:
    try:
      array = np.asarray(_get(params, entry.path), np.float32)
    except KeyError as error:
      raise ConversionError(f'Parameter {"/".join(entry.path)} (for {entry.torch_name}) is '
                            f'missing from the params tree.') from error
    if entry.rows is not None:  # the authors' row count: cut the (zero) vocabulary padding
      array = _fit_rows(array, entry.rows[0], entry)
    # np.array (not ascontiguousarray, which turns a 0-d logit_scale into shape [1]).
    out[entry.torch_name] = np.array(_to_torch(array, entry.layout, entry.path[-1] == 'kernel'),
                                     np.float32, order='C')
  return out


def _check_shapes(params: Params, config: ModelConfig, entries: List[Entry]) -> None:
  """Compares converted shapes with a freshly initialised model of `config` (abstractly)."""
  expected = expected_shapes(config, entries)
  bad = []
  for entry in entries:
    got = np.shape(_get(params, entry.path))
    want = expected.get(entry.path)
    if want is not None and tuple(got) != tuple(want):
      bad.append(f'{entry.torch_name}: converted {tuple(got)} but the config needs {tuple(want)}')
  if bad:
    raise ConversionError('Shape mismatch: ' + '; '.join(bad[:10]))


def expected_shapes(config: ModelConfig, entries: List[Entry]) -> Dict[Tuple[str, ...], tuple]:
  """Parameter shapes of an abstract init of the model these entries describe."""
  shapes = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.PRNGKey(0)))
  flat = traverse_util.flatten_dict(_unbox(shapes))
  is_backbone_only = all(e.path[0] == 'backbone' for e in entries)
  return {path: leaf.shape for path, leaf in flat.items()
          if not is_backbone_only or path[0] == 'backbone'}


def _unbox(tree):
  return nn.unbox(tree)


def to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor; never import torch for this check
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def load_state_dict(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
  """Reads a checkpoint file into {name: float32 numpy}.

  `.safetensors` and `.npz` need no torch; `.bin`/`.pt`/`.pth` import torch only here. A
  directory is searched for `model.safetensors` then `pytorch_model.bin`. A golden-style `.npz`
  with `param/<name>` keys is accepted too. A DataParallel `module.` prefix is dropped.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in ('model.safetensors', 'pytorch_model.bin'):
      candidate = os.path.join(path, name)
      if os.path.exists(candidate):
        return load_state_dict(candidate)
    raise FileNotFoundError(f'{path} holds neither model.safetensors nor pytorch_model.bin.')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Checkpoint {path} does not exist.')
  if path.endswith('.safetensors'):
    raw = safetensors_numpy.load_file(path)
  elif path.endswith('.npz'):
    with np.load(path) as data:
      raw = {k[len('param/'):] if k.startswith('param/') else k: data[k] for k in data.files
             if k.startswith('param/') or '/' not in k}
  elif path.endswith(('.bin', '.pt', '.pth')):
    torch = optional.require('torch', f'Reading {path} (convert it once to .safetensors to '
                                      'avoid that)')
    raw = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(raw, dict) and 'state_dict' in raw and isinstance(raw['state_dict'], dict):
      raw = raw['state_dict']
  else:
    raise ValueError(f'Unknown checkpoint format {path!r}: expected .safetensors, .bin, .pt, '
                     f'.pth or .npz.')
  return {k: np.asarray(to_numpy(v), np.float32) for k, v in strip_module_prefix(raw).items()}


def strip_module_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops the `module.` prefix that `nn.DataParallel` / DDP checkpoints put on every name."""
  return {re.sub(r'^module\.', '', k): v for k, v in state.items()}


def save_safetensors(state: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a torch-named state dict as safetensors (float32, contiguous)."""
  safetensors_numpy.save_file({k: np.array(v, np.float32, order='C') for k, v in state.items()},
                              path)


def infer_config(state_dict: Mapping[str, Any], **overrides) -> ModelConfig:
  """Reads the model sizes off a torch state dict (vocab rows, widths, depths, img LN, QA)."""
  shapes = {re.sub(r'^module\.', '', k): tuple(np.shape(v)) for k, v in state_dict.items()}

  def need(name):
    if name not in shapes:
      raise ConversionError(f'Cannot infer the config: {name} is missing from the state dict.')
    return shapes[name]

  vocab_size, hidden = need('bert.embeddings.word_embeddings.weight')
  depth = {}
  for torch_encoder, _, field in _ENCODERS:
    layer_ids = {int(m.group(1)) for k in shapes
                 for m in [re.match(rf'bert\.{torch_encoder}\.layer\.(\d+)\.', k)] if m}
    if not layer_ids:
      raise ConversionError(f'Cannot infer the config: no bert.{torch_encoder} layers.')
    depth[field] = max(layer_ids) + 1
  decoder = shapes.get('cls.predictions.decoder.weight') or shapes.get('half_mlm.decoder.weight')
  values = dict(
      vocab_size=vocab_size, hidden_size=hidden,
      word_vocab_size=decoder[0] if decoder else min(30522, vocab_size),
      mlp_dim=need('bert.txt_encoder.layer.0.intermediate.dense.weight')[0],
      max_position_embeddings=need('bert.embeddings.position_embeddings.weight')[0],
      type_vocab_size=need('bert.embeddings.token_type_embeddings.weight')[0],
      region_feature_dim=need('bert.img_embedding.weight')[1],
      use_region_layernorm='bert.LayerNorm.weight' in shapes,
      qa_num_answers=shapes['qa_head.weight'][0] if 'qa_head.weight' in shapes else 0,
      **depth)
  if 'num_heads' not in overrides:
    # Heads are not visible in the shapes; BERT convention is 64-d heads.
    values['num_heads'] = max(1, hidden // 64)
  values.update(overrides)
  return ModelConfig(**values)


# --- Downstream task models (spec §4, §6; `state_dict_shapes_extra.json`) -----------------------
# The task models keep the backbone under `backbone`, as the pre-training model does. Only the
# retrieval model's state dict has `logit_scale` (the others' `bert.*` has 299 keys without it).


def _bert_only(entries: List[Entry]) -> List[Entry]:
  return [e for e in entries if e.torch_name != 'logit_scale']


def retrieval_entries(config: ModelConfig) -> List[Entry]:
  """`BiImageBertForRetrieval`: backbone, `logit_scale`, `classifier` [2, H] (label 1 = matched)."""
  return backbone_entries(config) + _dense('classifier', ('classifier',))


def vqa_entries(config: ModelConfig) -> List[Entry]:
  """`BiImageBertForVQA`: backbone and the answer head `cls.predictions` (decoder [C, H])."""
  return _bert_only(backbone_entries(config)) + _prediction_head('cls.predictions',
                                                                 ('answer_head',))


def ve_entries(config: ModelConfig) -> List[Entry]:
  """`BiImageBertForSequenceClassification` (SNLI-VE): backbone and `classifier` [3, H]."""
  return _bert_only(backbone_entries(config)) + _dense('classifier', ('classifier',))


def re_entries(config: ModelConfig) -> List[Entry]:
  """`BiImageBertForRE`: backbone and the (unused with mod 1) `classifier` [num_labels, H]."""
  return _bert_only(backbone_entries(config)) + _dense('classifier', ('classifier',))


TASKS = ('pretrain', 'retrieval', 'vqa', 've', 're')


def task_entries(task: str, config: ModelConfig) -> List[Entry]:
  """The entry table of a model: 'pretrain', 'backbone' (`BiImageBertRep`) or a task's."""
  tables = {'pretrain': pretraining_entries, 'backbone': backbone_entries,
            'retrieval': retrieval_entries, 'vqa': vqa_entries, 've': ve_entries,
            're': re_entries}
  if task not in tables:
    raise ValueError(f'Unknown task {task!r}; choose from {sorted(tables)}.')
  return tables[task](config)


def source_task(state: Mapping[str, Any]) -> str:
  """Which model an authors'-layout state dict is of, read off its head tensors.

  'pretrain' (`cls.seq_relationship` / `half_mlm`), 'vqa' (only `cls.predictions`, one decoder
  row per answer), 've' (`classifier` [3, H]), 'retrieval' (`classifier` [2, H] with
  `logit_scale`), 're' (another `classifier`) or 'backbone' (`bert.*` only).
  """
  if 'classifier.weight' in state:
    rows = np.shape(state['classifier.weight'])[0]
    if rows == 3:
      return 've'
    return 'retrieval' if rows == 2 and 'logit_scale' in state else 're'
  if any(k.startswith(('cls.seq_relationship.', 'half_mlm.')) for k in state):
    return 'pretrain'
  if 'cls.predictions.decoder.weight' in state:
    return 'vqa'
  return 'backbone'


def torch_shape(shape: Sequence[int], layout: str, is_kernel: bool) -> Tuple[int, ...]:
  """The torch-side shape of a parameter of our `shape` (the inverse of `_to_ours`)."""
  shape = tuple(shape)
  if layout == COPY:
    return shape
  if layout == LINEAR:
    return shape[::-1]
  if layout == QKV:
    return (shape[1] * shape[2], shape[0]) if is_kernel else (shape[0] * shape[1],)
  if layout == ATTN_OUT:
    return (shape[2], shape[0] * shape[1])
  raise ValueError(f'Unknown layout {layout}.')


def _fit_rows(array: np.ndarray, rows: int, entry: Entry) -> np.ndarray:
  try:
    return vocab_padding.fit_rows(array, rows, entry.torch_name)
  except ValueError as error:
    raise ConversionError(str(error)) from error


def to_ours(array: np.ndarray, entry: Entry, config: ModelConfig) -> np.ndarray:
  """One torch tensor in our layout (the heads of `config` split q/k/v and attention output).

  A vocabulary tensor (`entry.rows`) with the authors' or the model's row count gets the model's
  (zero padding rows appended, or zero rows cut); any other row count is left for the shape checks.
  """
  array = _to_ours(array, entry.layout, config, entry.path[-1] == 'kernel')
  if entry.rows is not None and np.shape(array)[:1] and np.shape(array)[0] in entry.rows:
    array = _fit_rows(array, entry.rows[1], entry)
  return array


def accepted_torch_shape(shape: Sequence[int], entry: Entry,
                         got: Sequence[int]) -> Tuple[int, ...]:
  """The torch shape `to_ours` accepts for a parameter of our `shape`: `torch_shape`, with
  either row count of `entry.rows` for a vocabulary tensor (`got` says which one is offered)."""
  expected = torch_shape(shape, entry.layout, entry.path[-1] == 'kernel')
  if entry.rows is not None and tuple(got)[:1] and tuple(got)[0] in entry.rows:
    expected = (tuple(got)[0],) + expected[1:]
  return expected


def vocab_rows(config: ModelConfig) -> Dict[Tuple[str, ...], Tuple[int, int]]:
  """{our path: (authors' rows, model rows)} of the vocabulary tensors of a pre-training model."""
  return {e.path: e.rows for e in pretraining_entries(config) if e.rows is not None}
