"""`mvp_jax.inference.Predictor` on a small run written exactly as the trainer writes one.

`make_run` builds a ShapesWorld dataset, the run's config files, an orbax checkpoint of perturbed
parameters and a TensorBoard summary: the layout `load_trained` reads. `test_notebook.py` covers
a genuinely trained smoke run end to end.
"""

import atexit
import functools
import os
import shutil
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest

import mvp_jax
from mvp_jax import inference
from mvp_jax import inference_cli

STEP = 7
METRICS = {'val/mlm_accuracy': 0.25, 'retrieval/t2i_R@1': 0.5, 'train/loss': 3.5}


@functools.lru_cache(maxsize=None)
def make_run() -> str:
  """A run workdir (shared by this session's tests; removed at exit)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from configs import mvp_tiny  # pylint: disable=g-import-not-at-top
  from input_pipeline.shapesworld import build  # pylint: disable=g-import-not-at-top
  from mvp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from mvp_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix='mvp_h5_run_')
  atexit.register(shutil.rmtree, workdir, ignore_errors=True)
  config = mvp_tiny.get_config('smoke')
  config.data.directory = os.path.join(workdir, 'data')
  config.data.shapesworld.update(num_train_images=12, num_val_images=4)
  build.build_dataset(config.data.directory, build.config_from_dict(config.data.shapesworld))
  model_config = train.model_config(config, config.data.directory)
  params = nn.unbox(jax.jit(functools.partial(mvp_jax.init_params, model_config))(
      jax.random.PRNGKey(0)))
  # Perturb every parameter so that LayerNorms and biases are not trivially 1 / 0.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [
      leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])
  checkpointing.save_run_configs(workdir, config, model_config)
  manager = checkpointing.CheckpointManager(os.path.join(workdir, 'checkpoints'), save_every=1,
                                            keep=1, async_save=False)
  manager.save(STEP, {'params': params, 'step': STEP}, {}, force=True)
  manager.close()
  writer = metric_writers.create_default_writer(workdir, asynchronous=False)
  writer.write_scalars(STEP - 1, {k: 0.0 for k in METRICS})
  writer.write_scalars(STEP, METRICS)
  writer.close()
  return workdir


@pytest.fixture(scope='module')
def predictor():
  return inference.Predictor.load(make_run())


def test_fill_mask_returns_vocabulary_words(predictor):
  image = predictor.shapesworld_record(1)
  result = predictor.fill_mask(image, 'a red [MASK] left of a blue [mask]', top_k=4)
  assert len(result['masks']) == 2
  vocab = {predictor.tokenizer.id_to_token(i) for i in range(predictor.tokenizer.vocab_size)}
  for candidates in result['masks']:
    assert len(candidates) == 4
    words, probs = zip(*candidates)
    assert set(words) <= vocab
    assert not any(w.startswith('[') for w in words)  # special tokens are excluded
    assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
  assert '[MASK]' not in result['text']
  assert result['text'].startswith('a red ' + candidates_word(result, 0))
  with pytest.raises(ValueError, match='MASK'):
    predictor.fill_mask(image, 'a red circle')


def candidates_word(result, index):
  return result['masks'][index][0][0].removeprefix('##')


def test_batched_calls_equal_single_calls(predictor):
  images = [predictor.shapesworld_record(i) for i in range(3)]
  texts = [images[0]['captions'][0], 'a [MASK] circle', images[2]['captions'][1]]
  batched = predictor.match_score(images, texts)
  assert len(batched) == 3 and all(0.0 <= s <= 1.0 for s in batched)
  for image, text, score in zip(images, texts, batched):
    assert abs(predictor.match_score(image, text) - score) < 1e-5
  # One image, several texts broadcasts.
  broadcast = predictor.match_score(images[0], texts)
  assert abs(broadcast[0] - batched[0]) < 1e-5


def test_embeddings_equal_the_backbone(predictor):
  images = [predictor.shapesworld_record(i) for i in range(3)]
  texts = [r['captions'][0] for r in images]
  text_embeddings = predictor.embed_texts(texts)
  image_embeddings = predictor.embed_images(images)
  assert text_embeddings.shape == image_embeddings.shape == (3, predictor.config.hidden_size)
  np.testing.assert_allclose(np.linalg.norm(text_embeddings, axis=1), 1.0, atol=1e-5)
  batch, _, _ = predictor.encode(images, texts)
  outputs = mvp_jax.run_backbone(predictor.config, predictor.params, batch)
  np.testing.assert_allclose(text_embeddings, outputs['text_embedding'], atol=1e-5)
  np.testing.assert_allclose(image_embeddings, outputs['visual_embedding'], atol=1e-5)
  ranking = predictor.retrieve(texts[1], images, top_k=3)
  scores = image_embeddings @ text_embeddings[1]
  assert [i for i, _ in ranking] == list(np.argsort(-scores))
  assert predictor.embed_texts(texts[0]).shape == (predictor.config.hidden_size,)


def test_ground_gives_phrase_region_cosines(predictor):
  record = predictor.shapesworld_record(2)
  caption = record['captions'][1]
  result = predictor.ground(record, caption)
  phrases = result['phrases']
  assert phrases and all(p in predictor.concept_vocab.phrase2id for p in phrases)
  assert all(p in predictor.phrases_of(caption) for p in phrases)
  num_regions = min(len(record['boxes']), predictor.lengths.max_img_seq_length)
  assert result['similarity'].shape == (len(phrases), num_regions)
  np.testing.assert_array_equal(result['boxes'], record['boxes'][:num_regions])
  assert result['region'] == list(result['similarity'].argmax(1))
  np.testing.assert_array_equal(result['phrase_boxes'], record['boxes'][result['region']])
  # The map is the cosine of the cross-modal phrase and region outputs.
  batch, _, _ = predictor.encode([record], [caption])
  sequence = np.asarray(mvp_jax.run_backbone(predictor.config, predictor.params, batch)[
      'cross_sequence_output'])[0]
  (p0, p1), (r0, r1) = batch['phrase_index'][0], batch['img_index'][0]
  phrase = sequence[p0:p1] / np.linalg.norm(sequence[p0:p1], axis=1, keepdims=True)
  region = sequence[r0:r1] / np.linalg.norm(sequence[r0:r1], axis=1, keepdims=True)
  np.testing.assert_allclose(result['similarity'], phrase @ region.T, atol=1e-5)
  # Given tuples replace the extractor; unknown ones are dropped.
  given = predictor.ground(record, caption, phrases=[phrases[0], ('no', 'such', 'phrase')])
  assert given['phrases'] == [phrases[0]]


def test_plain_rgb_image_uses_grid_regions(predictor):
  record = predictor.shapesworld_record(0)
  image = np.asarray(inference.record_image(record))
  result = predictor.ground(image, 'a red circle')
  assert result['boxes'].shape == (min(predictor.grid ** 2 + 1,
                                       predictor.lengths.max_img_seq_length), 4)
  assert predictor.fill_mask(image, 'a [MASK] square')['masks'][0]
  drawn = inference.draw_boxes(record, result['phrase_boxes'], [' '.join(p) for p in
                                                                 result['phrases']])
  assert drawn.size == (4 * image.shape[1], 4 * image.shape[0])


def test_cli_prints_the_filled_word():
  output = inference_cli.run_cli(make_run(), 'a [MASK] above a green square', 'fill_mask',
                             shapesworld_index=1, top_k=3)
  lines = output.splitlines()
  assert lines[0].startswith('ShapesWorld val image 1')
  assert lines[2].startswith('[MASK] 0: ') and lines[2].count('(') == 3
  assert '[MASK]' not in lines[1] and lines[1].endswith('above a green square')
  assert 'P(matched) = ' in inference_cli.run_cli(make_run(), 'a green square', 'match')
  grounded = inference_cli.run_cli(make_run(), 'a green hexagon is below a large star', 'ground',
                               shapesworld_index=1)
  assert "'hexagon' -> region " in grounded


def test_fill_mask_of_a_padded_vocabulary_returns_the_same_real_words(predictor):
  """The run loaded with `vocab_multiple=128` (decoder rows padded, padding biases made to win
  if they were not masked) fills masks exactly as the unpadded model does."""
  from mvp_jax import api  # pylint: disable=g-import-not-at-top
  config, params = api.load_checkpoint(make_run(), vocab_multiple=128)
  assert config.padded_word_vocab_size > config.word_vocab_size
  params = jax.tree_util.tree_map(np.array, params)
  params['mlm_head']['bias'][config.word_vocab_size:] = 1000.0
  padded = inference.Predictor(config, params, predictor.tokenizer, predictor.concept_vocab,
                               predictor.lengths, predictor.data_config)
  image = predictor.shapesworld_record(1)
  text = 'a red [MASK] left of a blue [mask]'
  ours, reference = padded.fill_mask(image, text, top_k=4), predictor.fill_mask(image, text,
                                                                                top_k=4)
  assert ours['text'] == reference['text']
  for got, want in zip(ours['masks'], reference['masks']):
    assert [w for w, _ in got] == [w for w, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
