"""Hub export / reload (`mvp_jax/export_hf.py`, read back by `mvp_jax.load_checkpoint`) and the
authors' checkpoint import (`mvp_jax/import_authors.py`)."""

import functools
import json
import os
from unittest import mock

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import mvp_jax
from mvp_jax import checkpointing
from mvp_jax import convert
from mvp_jax import export_hf
from mvp_jax import import_authors
from mvp_jax import weights
from test_inference import make_run, METRICS, STEP  # pylint: disable=g-bad-import-order


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('hub') / 'mvp')
  return export_hf.export(make_run(), out)


def test_folder_contents_and_config(exported):
  names = sorted(os.listdir(exported))
  assert names == ['README.md', 'config.json', 'id2phrase.json', 'model.safetensors',
                   'text_encoder', 'vocab.txt']
  config, params, step = checkpointing.load_trained(make_run())
  fields = json.load(open(os.path.join(exported, 'config.json'), encoding='utf-8'))
  # Authors' fields: each encoder is built from num_hidden_layers // 2.
  assert fields['num_hidden_layers'] // 2 == config.num_text_layers == 1
  assert (fields['vocab_size'], fields['hidden_size'], fields['img_feature_dim']) == (
      config.vocab_size, config.hidden_size, config.region_feature_dim)
  assert fields['use_img_layernorm'] == 1 and fields['num_attention_heads'] == config.num_heads
  assert mvp_jax.ModelConfig.from_dict(fields['mvp_jax']['model_config']) == config
  assert fields['mvp_jax']['step'] == step == STEP
  assert fields['mvp_jax']['lengths']['max_img_seq_length'] == 7
  data_dir = os.path.join(make_run(), 'data')
  for name in ('vocab.txt', 'id2phrase.json'):
    assert open(os.path.join(exported, name), 'rb').read() == open(
        os.path.join(data_dir, name), 'rb').read()
  state = load_file(os.path.join(exported, 'model.safetensors'))
  expected = convert.params_to_torch(params, config)
  assert sorted(state) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(state[name], value, err_msg=name)
  card = open(os.path.join(exported, 'README.md'), encoding='utf-8').read()
  assert card.startswith('---\n') and 'library_name: mvp-jax' in card
  assert f'| val/mlm_accuracy | {STEP} | {METRICS["val/mlm_accuracy"]:.4f} |' in card
  assert f'| retrieval/t2i_R@1 | {STEP} | {METRICS["retrieval/t2i_R@1"]:.4f} |' in card
  assert 'Final training loss: 3.5000' in card and '| batch size | 8 |' in card


def test_round_trip_reproduces_outputs(exported):
  config, params, _ = checkpointing.load_trained(make_run())
  loaded_config, loaded = mvp_jax.load_checkpoint(exported)
  assert loaded_config == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(params))
  batch = mvp_jax.dummy_batch(config, text_length=10, tag_length=5, num_regions=4)
  rng = np.random.RandomState(0)
  batch = dict(batch, input_ids_a=rng.randint(0, config.vocab_size, (2, 10)),
               img_feats=rng.randn(2, 4, config.region_feature_dim).astype(np.float32))
  before = mvp_jax.run_backbone(config, params, batch)
  after = mvp_jax.run_backbone(loaded_config, loaded, batch)
  for name in ('cross_sequence_output', 'pooled_output', 'sim_mat'):
    np.testing.assert_array_equal(np.asarray(after[name]), np.asarray(before[name]))


def test_predictor_from_exported_equals_from_workdir(exported):
  from mvp_jax import inference  # pylint: disable=g-import-not-at-top
  a = inference.Predictor.load(make_run())
  b = inference.Predictor.load(exported)
  assert a.lengths == b.lengths
  record = a.shapesworld_record(2)
  assert record['image_png'] == b.shapesworld_record(2)['image_png']
  text = 'a green [MASK] is below a large star'
  assert a.fill_mask(record, text) == b.fill_mask(record, text)


def test_push_to_hub_uploads_the_folder(exported, tmp_path):
  api = mock.MagicMock()
  with mock.patch('huggingface_hub.HfApi', return_value=api):
    out = export_hf.export(make_run(), str(tmp_path / 'again'), push_to_hub='me/mvp-tiny',
                           private=True, text_encoder=False)
  api.create_repo.assert_called_once_with(repo_id='me/mvp-tiny', repo_type='model',
                                          private=True, exist_ok=True)
  api.upload_folder.assert_called_once()
  kwargs = api.upload_folder.call_args.kwargs
  assert kwargs['folder_path'] == out and kwargs['repo_id'] == 'me/mvp-tiny'
  assert 'model.safetensors' in os.listdir(kwargs['folder_path'])


def test_base_config_export_names_and_shapes(reference_dir):
  """The export table of the base config gives the authors' 316 names and shapes (abstractly)."""
  expected = json.loads((reference_dir / 'state_dict_shapes.json').read_text())
  config = mvp_jax.ModelConfig(qa_num_answers=3129)
  shapes = nn.unbox(jax.eval_shape(lambda: mvp_jax.init_params(config, jax.random.PRNGKey(0))))
  exported = {}
  for entry in convert.pretraining_entries(config):
    leaf = shapes
    for key in entry.path:
      leaf = leaf[key]
    exported[entry.torch_name] = list(convert.torch_shape(leaf.shape, entry.layout,
                                                          entry.path[-1] == 'kernel'))
  assert exported == {k: list(v) for k, v in expected.items()}
  fields = weights.authors_config(config)
  assert (fields['num_hidden_layers'], fields['vocab_size'], fields['qa_answer_size']) == (
      12, 86051, 3129)


# --- The authors' checkpoints ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def authors_state():
  """A pre-training state dict in the authors' names (tiny config with qa_head and image LN)."""
  config = mvp_jax.config.tiny(qa_num_answers=7, region_feature_dim=16)
  params = jax.jit(functools.partial(mvp_jax.init_params, config))(jax.random.PRNGKey(4))
  return config, convert.params_to_torch(params, config)


def save_bin(state, path, dtype=None):
  torch = pytest.importorskip('torch')
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  if dtype is not None:
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
  torch.save(tensors, path)
  return str(path)


def test_import_fp16_pretraining_checkpoint(tmp_path):
  torch = pytest.importorskip('torch')
  config, state = authors_state()
  checkpoint = save_bin({f'module.{k}': v for k, v in state.items()},
                        tmp_path / 'pytorch_model.bin', torch.float16)
  (tmp_path / 'config.json').write_text(json.dumps({'num_attention_heads': config.num_heads}))
  out = str(tmp_path / 'out')
  report = import_authors.import_checkpoint(checkpoint, out)
  assert report['kind'] == 'pretrain' and report['source_dtypes'] == ['float16']
  assert report['fresh'] == [] and report['skipped'] == []
  loaded_config, params = mvp_jax.load_checkpoint(out)
  assert loaded_config == config
  expected = convert.torch_to_params(state, config)
  flat = lambda tree: jax.tree_util.tree_leaves_with_path(tree)
  for (path, got), (_, want) in zip(flat(params), flat(expected)):
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3, err_msg=str(path))
  assert f'init_from={out}' in import_authors.describe(report, out)
  # The trainer's init_from accepts the folder as is, and the original file equally.
  target = jax.tree_util.tree_map(jax.numpy.zeros_like, expected)
  for source in (out, checkpoint):
    loaded, _ = weights.load(source, target, model_config=config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_import_vqa_and_retrieval_checkpoints(tmp_path):
  config, state = authors_state()
  hidden = config.hidden_size
  backbone = {k: v for k, v in state.items() if k.startswith('bert.')}
  no_ln = {k: v for k, v in backbone.items() if not k.startswith('bert.LayerNorm.')}
  vqa = dict(no_ln, **{k: v for k, v in state.items() if k.startswith('cls.predictions.')})
  vqa['cls.predictions.decoder.weight'] = np.ones([11, hidden], np.float32)
  vqa['cls.predictions.bias'] = np.ones([11], np.float32)
  convert.save_safetensors(vqa, str(tmp_path / 'vqa.safetensors'))
  report = import_authors.import_checkpoint(str(tmp_path / 'vqa.safetensors'),
                                            str(tmp_path / 'vqa'), num_heads=config.num_heads,
                                            img_layernorm='add')
  assert report['kind'] == 'vqa'
  assert any('logit_scale is not in the source' in n for n in report['notes'])
  assert any('no image LayerNorm; starts as identity' in n for n in report['notes'])
  imported_config, params = mvp_jax.load_checkpoint(str(tmp_path / 'vqa'))
  assert imported_config.use_region_layernorm and set(params) == {'backbone', 'answer_head'}
  np.testing.assert_array_equal(params['answer_head']['decoder'], np.ones([11, hidden]))
  np.testing.assert_array_equal(
      params['backbone']['region_embedding']['img_layernorm']['scale'], np.ones(hidden))
  np.testing.assert_array_equal(params['backbone']['text_encoder']['layer_0']['output']['bias'],
                                backbone['bert.txt_encoder.layer.0.output.dense.bias'])

  retrieval = dict(backbone, logit_scale=np.float32(1.5),
                   **{'classifier.weight': np.arange(2 * hidden, dtype=np.float32).reshape(
                       2, hidden), 'classifier.bias': np.array([0.5, -0.5], np.float32)})
  convert.save_safetensors(retrieval, str(tmp_path / 'coco.safetensors'))
  report = import_authors.import_checkpoint(
      str(tmp_path / 'coco.safetensors'), str(tmp_path / 'coco'), num_heads=config.num_heads,
      img_layernorm='drop')
  assert report['kind'] == 'retrieval'
  assert report['skipped'] == ['bert.LayerNorm.weight', 'bert.LayerNorm.bias']
  loaded_config, params = mvp_jax.load_checkpoint(str(tmp_path / 'coco'))
  assert not loaded_config.use_region_layernorm
  np.testing.assert_array_equal(params['classifier']['kernel'], retrieval['classifier.weight'].T)
  assert float(params['backbone']['logit_scale']) == 1.5
  assert 'img_layernorm' not in params['backbone']['region_embedding']
