"""One way to load weights into a model (`load`, `init_from`) and one to write them (`export`).

  params, report = weights.load(source, target, model_config=cfg, task='vqa', vocab_dir=data_dir)
  params, report = weights.init_from(target, model_config=cfg, mvptr=source, tower=siglip_dir)

`source`, recognised by `read` in this order: our run directory (`<run>/checkpoints/<step>` picks
a step); a Hugging Face BERT folder (`hf_bert.py`); an exported folder (from `export`); the
authors' checkpoints (a `.bin` / `.pt` / `.pth` / `.safetensors` file or a folder holding
`model.safetensors` / `pytorch_model.bin`; fp16 or fp32; pre-training, retrieval, VQA, SNLI-VE or
RE layout; with or without the image LayerNorm), a golden-style `.npz`, or an in-memory {torch
name: array} state dict. What it is (pre-training, backbone only or a task) is decided once, in
`read`: the run's `task` / tree, the exported `mvp_jax.task`, or the heads (`convert.source_task`).

The rules of `load`, the same for init_from, fine-tuning, inference and `load_checkpoint`:
  - Backbone: every target backbone parameter comes from the source with the same shape, else
    WeightsError naming the parameter and both shapes. Reported exceptions: `logit_scale` (absent
    from the authors' VQA / SNLI-VE / RE dicts) is `model_config.logit_scale_init`; an image
    LayerNorm the source lacks starts as the identity (as the authors' code does).
  - Heads are copied when the source is of the target's task (backbone-only counts as
    pre-training); a head of another shape stays fresh, reported. task='vqa' from pre-training:
    `vqa_init_from_mlm` copies the MLM head's transform into the answer head.
  - `skip` regexes (on our path 'a/b/c' and on the torch name) leave parameters fresh; source
    tensors with no place in the target are listed in `report.skipped`, with why.
  - `vocab_dir` (the run's dataset): vocabularies the source carries (vocab.txt, id2phrase.json)
    must be the run's, else WeightsError saying what differs (a BERT folder's: by token).
`init_from` also fills a pixel model's tower (`backbone/vision_tower`) from a SigLIP checkpoint.
"""

import dataclasses
import os
import re
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util
from safetensors.numpy import save_file

from mvp_jax import checkpointing
from mvp_jax import convert
from mvp_jax import hf_bert
from mvp_jax import run_dir
from mvp_jax import vocab_padding
from mvp_jax.config import ModelConfig

Path = Tuple[str, ...]
FORMAT_VERSION = 1
_HEAD_OWNERS = ('mlm_head', 'itm_head', 'concept_head', 'qa_head')
_IMG_LAYERNORM = ('backbone', 'region_embedding', 'img_layernorm')
ARCHITECTURES = {'pretrain': 'BiBertImgForPreTraining', 'retrieval': 'BiImageBertForRetrieval',
                 'vqa': 'BiImageBertForVQA', 've': 'BiImageBertForSequenceClassification',
                 're': 'BiImageBertForRE'}


class WeightsError(ValueError):
  """The source does not fit the target (shapes, missing backbone, vocabularies)."""


@dataclasses.dataclass
class LoadReport:
  """What `load` did. Paths are ours ('backbone/pooler/dense/kernel'); skipped are source names."""
  source: str
  source_kind: str
  source_task: str
  loaded: List[str] = dataclasses.field(default_factory=list)
  fresh: List[str] = dataclasses.field(default_factory=list)
  skipped: List[str] = dataclasses.field(default_factory=list)
  notes: List[str] = dataclasses.field(default_factory=list)
  origins: Dict[str, str] = dataclasses.field(default_factory=dict)  # part -> source (init_from)

  def summary(self) -> str:
    lines = [f'{self.source} ({self.source_kind}, a {self.source_task} checkpoint): loaded '
             f'{len(self.loaded)} parameters.'] + [f'{k} from {v}' for k, v in self.origins.items()]
    if self.fresh:
      lines.append(f'Not from the source ({len(self.fresh)}): {_short(self.fresh)}.')
    if self.skipped:
      lines.append(f'Source tensors not used: {len(self.skipped)} (why below).')
    return '\n'.join(lines + [f'- {note}' for note in self.notes])


def _short(names: Sequence[str], limit: int = 12) -> str:
  return ', '.join(names[:limit]) + (f' and {len(names) - limit} more' * (len(names) > limit))


@dataclasses.dataclass
class Source:
  """A read source: authors'-layout tensors (`state`) or our parameter tree (`tree`)."""
  name: str
  kind: str    # 'run', 'exported', 'authors', 'npz', 'hf_bert'
  task: str    # 'pretrain', 'backbone', 'retrieval', 'vqa', 've', 're' ('bert' for hf_bert)
  state: Optional[Dict[str, np.ndarray]] = None
  tree: Optional[Dict[Path, np.ndarray]] = None
  config: Optional[ModelConfig] = None            # when the source records its ModelConfig
  vocab_dir: Optional[str] = None                 # folder with the source's vocabularies
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)


def read(source: Union[str, os.PathLike, Mapping[str, Any], Source]) -> Source:
  """Reads and classifies a source (see the module docstring)."""
  if isinstance(source, Source):
    return source
  if isinstance(source, Mapping):
    state = convert.strip_module_prefix({k: np.asarray(convert.to_numpy(v), np.float32)
                                         for k, v in source.items()})
    if hf_bert.is_bert_state(state):
      raise WeightsError('An in-memory BERT state dict: pass its Hugging Face folder instead.')
    return Source('<state dict>', 'authors', convert.source_task(state), state=state)
  path = os.fspath(source)
  run = run_dir.run_and_step(path)
  if run is not None:
    return _read_run(*run)
  if not epath.Path(path).exists():
    raise FileNotFoundError(f'Checkpoint {path} does not exist.')
  folder = path if epath.Path(path).is_dir() else os.path.dirname(path)
  fields = run_dir.read_folder_config(folder)
  state = convert.load_state_dict(path)
  vocab_dir = folder if run_dir.has_vocabularies(folder) else None
  if hf_bert.is_bert_state(state):
    return Source(path, 'hf_bert', 'bert', vocab_dir=vocab_dir, info=fields)
  section = fields.get('mvp_jax') or {}
  config = ModelConfig.from_dict(section['model_config']) if 'model_config' in section else None
  kind = 'exported' if config else ('npz' if path.endswith('.npz') else 'authors')
  task = section.get('task') or convert.source_task(state)
  if 'bert.embeddings.word_embeddings.weight' not in state:
    raise WeightsError(f'{path} has no bert.embeddings.word_embeddings.weight: not an MVPTR or '
                       f'BERT checkpoint (first names: {sorted(state)[:5]}).')
  info = dict(fields, data=section.get('data', {}), lengths=section.get('lengths', {}))
  return Source(path, kind, task, state=state, config=config, vocab_dir=vocab_dir, info=info)


def _read_run(workdir: str, step: Optional[int]) -> Source:
  config, params, step = checkpointing.load_trained(workdir, step)
  tree = {k: np.asarray(jax.device_get(v)) for k, v in traverse_util.flatten_dict(
      nn.unbox(params)).items()}
  run_config = run_dir.read_run_config(workdir)
  try:
    vocab_dir = run_dir.find_dataset_dir(workdir)
  except FileNotFoundError:
    vocab_dir = None
  data = run_config.get('data', {})
  return Source(workdir, 'run', run_config.get('task') or _tree_task(tree), tree=tree,
                config=config, vocab_dir=vocab_dir, info={'step': step, 'data': data,
                                                          'lengths': data})


def _tree_task(tree: Mapping[Path, Any]) -> str:
  tops = {path[0] for path in tree}
  if 'answer_head' in tops:
    return 'vqa'
  if tops & set(_HEAD_OWNERS):
    return 'pretrain'
  if 'classifier' in tops:
    return {3: 've', 2: 'retrieval'}.get(np.shape(tree[('classifier', 'kernel')])[-1], 're')
  return 'backbone'


@dataclasses.dataclass(frozen=True)
class _Candidate:
  value: np.ndarray
  name: str                                 # the source's name of the tensor
  entry: Optional[convert.Entry] = None     # its torch layout, for authors'-layout sources


def _candidates(src: Source, config: ModelConfig, task: str,
                vqa_init_from_mlm: bool) -> Tuple[Dict[Path, _Candidate], Dict[str, str]]:
  """({target path: source tensor}, {source name: why it has no target}) for a non-BERT source."""
  if src.tree is not None:
    by_path = {p: _Candidate(v, '/'.join(p)) for p, v in src.tree.items()}
    unknown = {}
  else:
    # Tables of every optional part, so that all names are recognised; the target's shapes
    # decide what is used.
    table = config.replace(use_region_layernorm=True, qa_num_answers=1)
    entries = convert.backbone_entries(table)
    if src.task != 'backbone':
      entries += [e for e in convert.task_entries(src.task, table) if e.path[0] != 'backbone']
    by_path = {e.path: _Candidate(src.state[e.torch_name], e.torch_name, e) for e in entries
               if e.torch_name in src.state}
    known = {c.name for c in by_path.values()}
    unknown = {k: 'not a parameter of this model configuration' for k in src.state
               if k not in known}
  same_task = src.task == task or (task == 'pretrain' and src.task == 'backbone')
  out, reasons = {}, dict(unknown)
  for path, candidate in by_path.items():
    if path[0] == 'backbone' or same_task:
      out[path] = candidate
    else:
      reasons[candidate.name] = f'a {src.task} head, not used by a {task} model'
  if task == 'vqa' and vqa_init_from_mlm:
    for path, candidate in by_path.items():
      if path[:2] in (('mlm_head', 'transform'), ('mlm_head', 'transform_layernorm')):
        out.setdefault(('answer_head',) + path[1:], candidate)
        reasons.pop(candidate.name, None)
  return out, reasons


def _converted(candidate: _Candidate, shape: Tuple[int, ...], config: ModelConfig,
               path: Path = ()):
  """(array in our layout, None) or (None, 'shape mismatch text').

  Vocabulary tensors (word table, MLM / concept decoders and biases) may come with the authors'
  row count or another padding of it: `vocab_padding.fit_rows` gives them the model's.
  """
  value, entry = candidate.value, candidate.entry
  if entry is None:
    rows = convert.vocab_rows(config).get(path)
    if rows is not None and value.ndim and tuple(value.shape[1:]) == tuple(shape[1:]) and (
        value.shape[0] != shape[0]) and (min(value.shape[0], shape[0]) >= rows[0]):
      try:
        return vocab_padding.fit_rows(value, shape[0], candidate.name), None
      except ValueError as error:
        return None, str(error)
    if tuple(value.shape) != tuple(shape):
      return None, f'checkpoint {tuple(value.shape)}, model {tuple(shape)}'
    return value, None
  expected = convert.accepted_torch_shape(shape, entry, value.shape)
  if tuple(value.shape) != expected:
    return None, (f'checkpoint {entry.torch_name} {tuple(value.shape)}, model {expected} '
                  f'(torch layout; ours {tuple(shape)})')
  try:
    return convert.to_ours(value, entry, config), None
  except convert.ConversionError as error:
    return None, str(error)


def load(source, target: Any, *, model_config: ModelConfig, task: str = 'pretrain',
         skip: Sequence[str] = (), vqa_init_from_mlm: bool = False, vocab_dir: Optional[str] = None,
         bert_layer_map: hf_bert.LayerMap = 'split') -> Tuple[Any, LoadReport]:
  """`target` with the source's weights put in; see the module docstring for the rules.

  Args:
    source: a path, an in-memory {torch name: array} state dict, or a `Source` from `read`.
    target: params pytree of the model (jax / numpy arrays, possibly sharded, or
      jax.ShapeDtypeStruct; boxed or not). Values the source lacks are kept, so an abstract
      target needs a source that provides everything.
    model_config: the target model's config; task: 'pretrain', 'retrieval', 'vqa', 've', 're'.
    skip: regexes of parameters to leave fresh.
    vqa_init_from_mlm: start the VQA answer head's transform from the MLM head.
    vocab_dir: the run's dataset folder, to check the source's vocabularies against.
    bert_layer_map: for a BERT folder, which BERT layers seed which encoder (`hf_bert`).
  Returns (params with target's tree, dtypes and shardings (unboxed), LoadReport).
  """
  if task not in convert.TASKS:
    raise WeightsError(f'Unknown task {task!r}; choose from {convert.TASKS}.')
  src = read(source)
  flat_target = traverse_util.flatten_dict(nn.unbox(target))
  report = LoadReport(src.name, src.kind, src.task)
  if vocab_dir and src.vocab_dir and src.kind != 'hf_bert':
    differences = run_dir.vocabulary_differences(src.vocab_dir, vocab_dir)
    if differences:
      raise WeightsError(f'{src.name} was trained with other vocabularies than the run\'s '
                         f'({vocab_dir}): ' + '; '.join(differences) + '. Its embedding rows '
                         'would mean other words: build the dataset with the checkpoint\'s '
                         'vocabularies, or train from scratch.')
  elif vocab_dir and src.kind != 'hf_bert':
    report.notes.append('the source carries no vocabularies: not checked against the run\'s.')
  if src.kind == 'hf_bert':
    abstract = [p for p, leaf in flat_target.items() if isinstance(leaf, jax.ShapeDtypeStruct)]
    if abstract:
      raise WeightsError(f'{src.name} (a BERT folder) seeds an initialised model: the target '
                         f'must hold values, not shapes ({"/".join(abstract[0])}).')
    values = {p: np.asarray(jax.device_get(v), np.float32) for p, v in flat_target.items()}
    seeded, bert_report = hf_bert.seed_from_bert(src.name, values, model_config,
                                                 vocab_dir=vocab_dir, layer_map=bert_layer_map)
    candidates = {p: _Candidate(v, 'bert:' + '/'.join(p)) for p, v in seeded.items()}
    reasons = {}
    report.notes.append(f'BERT layers {bert_report["layer_map"]}, word rows '
                        f'{bert_report["word_rows"]} ({bert_report["words_copied"]} copied), '
                        f'{bert_report["concept_rows_from_words"]} concept rows from words.')
  else:
    candidates, reasons = _candidates(src, model_config, task, vqa_init_from_mlm)
  skipped_by_rule = lambda *names: any(re.search(p, n) for p in skip for n in names if n)
  values, used, missing, mismatched = {}, set(), [], []
  for path, leaf in flat_target.items():
    name, candidate = '/'.join(path), candidates.get(path)
    if skipped_by_rule(name, candidate.name if candidate else None):
      report.fresh.append(name)
      if candidate is not None:
        reasons.setdefault(candidate.name, 'matched by skip')
      continue
    if candidate is None:
      if path == ('backbone', 'logit_scale'):
        values[path] = np.asarray(model_config.logit_scale_init, np.float32)
        report.notes.append(f'backbone/logit_scale is not in the source: set to '
                            f'logit_scale_init = {model_config.logit_scale_init:.6g}.')
      elif path[:3] == _IMG_LAYERNORM:
        values[path] = (np.ones if path[-1] == 'scale' else np.zeros)(leaf.shape, np.float32)
        report.notes.append(f'{name}: the source has no image LayerNorm; starts as identity.')
      elif path[0] == 'backbone' and src.kind != 'hf_bert':
        missing.append(name)
        continue
      report.fresh.append(name)
      continue
    array, problem = _converted(candidate, tuple(leaf.shape), model_config, path)
    if problem is None:
      values[path] = array
      used.add(candidate.name)
      report.loaded.append(name)
    elif path[0] == 'backbone':
      mismatched.append(f'{name}: {problem}')
    else:
      report.fresh.append(name)
      reasons[candidate.name] = f'another shape than the model\'s {name} ({problem})'
  if missing or mismatched:
    raise WeightsError(
        f'{src.name} does not fit the {task} model\'s backbone: ' + '; '.join(
            ([f'{len(mismatched)} parameters of another shape: ' + '; '.join(mismatched[:6])]
             if mismatched else []) + ([f'missing {missing[:8]}'] if missing else [])))
  all_names = [c.name for c in candidates.values()] + list(reasons)
  for source_name in dict.fromkeys(all_names):
    if source_name not in used:
      report.skipped.append(source_name)
      reasons.setdefault(source_name, 'the model has no such parameter')
  for why in dict.fromkeys(reasons[n] for n in report.skipped):
    names = [n for n in report.skipped if reasons[n] == why]
    report.notes.append(f'not used ({why}): {_short(names, 6)}.')
  abstract_fresh = [p for p in report.fresh
                    if isinstance(flat_target[tuple(p.split('/'))], jax.ShapeDtypeStruct)
                    and tuple(p.split('/')) not in values]
  if abstract_fresh:
    raise WeightsError(f'{src.name} lacks {_short(abstract_fresh, 8)} and the target holds only '
                       'shapes: initialise the model to keep those fresh.')
  out = {p: (_place(values[p], leaf) if p in values else leaf) for p, leaf in flat_target.items()}
  return traverse_util.unflatten_dict(out), report


def init_from(target: Any, *, model_config: ModelConfig, mvptr=None, tower: Optional[str] = None,
              task: str = 'pretrain', **options) -> Tuple[Any, LoadReport]:
  """(params, report): all but a pixel model's tower from `mvptr` (`load`, `options` as there), the
  tower from the SigLIP checkpoint `tower` (`pixel_model.split_tower`); `report.origins` says."""
  from mvp_jax import pixel_model  # pylint: disable=g-import-not-at-top
  src = read(mvptr) if mvptr else None
  rest, part = pixel_model.split_tower(nn.unbox(target), model_config, src, tower)
  rest, report = (load(src, rest, model_config=model_config, task=task, **options) if src else (
      rest, LoadReport('<none>', 'none', task, fresh=pixel_model.flat_names(rest))))
  report.origins['MVPTR'] = src.name if src else 'random initialisation'
  return pixel_model.join_tower(rest, part, tower, report), report


def _place(value: np.ndarray, leaf) -> jax.Array:
  value = np.asarray(value, leaf.dtype)
  sharding = getattr(leaf, 'sharding', None)
  return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


# --- Export ---------------------------------------------------------------------------------

def to_state_dict(params: Any, model_config: ModelConfig,
                  task: str = 'pretrain') -> Dict[str, np.ndarray]:
  """{torch name: float32} in the authors' layout of `task` (VQA / VE / RE without logit_scale,
  as theirs; a pre-training tree may hold only some heads, or only the backbone)."""
  params = nn.unbox(params)
  if task == 'pretrain':
    entries = [e for e in convert.pretraining_entries(model_config) if e.path[0] in params]
    extra = sorted(set(params) - {e.path[0] for e in entries})
    if extra:
      raise WeightsError(f'Parameters {extra} are not part of a pre-training model: pass the '
                         f'task ({sorted(ARCHITECTURES)}).')
  else:
    entries = convert.task_entries(task, model_config)
  return convert.params_to_torch(params, model_config, entries)


def authors_config(config: ModelConfig, task: str = 'pretrain') -> Dict[str, Any]:
  """The authors' BertConfig-style fields of the task's model (spec §1.1)."""
  depths = {config.num_text_layers, config.num_visual_layers, config.num_cross_layers}
  fields = {
      'architectures': [ARCHITECTURES[task]], 'model_type': 'bert', 'vocab_size': config.vocab_size,
      'only_word_size': config.word_vocab_size, 'hidden_size': config.hidden_size,
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


def export(params: Any, model_config: ModelConfig, out_dir: str, *, task: str = 'pretrain',
           vocab_dir: Optional[str] = None, fields: Optional[Mapping[str, Any]] = None) -> str:
  """Writes an exported folder that `load` reads back exactly; returns out_dir.

  `config.json` (the authors' BertConfig fields plus an `mvp_jax` section: format_version,
  model_config, task and `fields`), `model.safetensors` (float32, the authors' layout of the task)
  and, with `vocab_dir`, its tokenizer file and `id2phrase.json`.
  """
  os.makedirs(out_dir, exist_ok=True)
  save_file(to_state_dict(params, model_config, task),
            os.path.join(out_dir, run_dir.MODEL_FILE), metadata={'format': 'pt'})
  section = {'format_version': FORMAT_VERSION, 'model_config': dataclasses.asdict(model_config),
             'task': task}
  if vocab_dir:
    tokenizer = run_dir.tokenizer_file(vocab_dir)
    section['tokenizer_file'] = os.path.basename(tokenizer)
    section['concepts_file'] = run_dir.CONCEPTS_FILE
    shutil.copyfile(tokenizer, os.path.join(out_dir, os.path.basename(tokenizer)))
    shutil.copyfile(run_dir.concepts_file(vocab_dir), os.path.join(out_dir, run_dir.CONCEPTS_FILE))
  section.update(fields or {})
  config_fields = dict(authors_config(model_config, task), mvp_jax=section)
  run_dir.write_json(config_fields, os.path.join(out_dir, run_dir.CONFIG_FILE))
  return out_dir
