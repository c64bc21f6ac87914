"""The extraction command (input_pipeline/extract_regions.py) on real-format image files."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
sentencepiece = pytest.importorskip('sentencepiece')

from input_pipeline import extract_regions  # pylint: disable=g-import-not-at-top
from input_pipeline import storage  # pylint: disable=g-import-not-at-top
from mvp_jax.vision import sources  # pylint: disable=g-import-not-at-top

LABELS = ['dog', 'cat', 'tree', 'boat']


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A tiny random SiglipModel folder with a SentencePiece tokenizer beside it."""
  folder = tmp_path_factory.mktemp('ckpt')
  text = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
              vocab_size=30, max_position_embeddings=8, bos_token_id=None, eos_token_id=1,
              pad_token_id=1)
  vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                image_size=32, patch_size=8)
  torch.manual_seed(0)
  transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)
                           ).save_pretrained(folder)
  corpus = folder / 'corpus.txt'
  corpus.write_text('\n'.join(['a photo of a dog', 'a photo of a cat', 'tree boat'] * 30))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(folder / 'spiece'), vocab_size=16, pad_id=0, eos_id=1,
      unk_id=2, bos_id=-1, minloglevel=2)
  (folder / 'labels.txt').write_text('\n'.join(LABELS))
  return folder


def _photo(h, w, seed):
  rng = np.random.default_rng(seed)
  base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
  return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp('images')
  Image.fromarray(_photo(48, 64, 0)).save(folder / 'a_rgb.jpg', quality=95)
  Image.fromarray(_photo(30, 40, 1)).save(folder / 'b_rgb.png')
  Image.fromarray(_photo(36, 36, 2)[..., 0]).save(folder / 'c_gray.png')
  Image.fromarray(_photo(40, 32, 3)).convert('CMYK').save(folder / 'd_cmyk.jpg')
  data = io.BytesIO()
  Image.fromarray(_photo(64, 64, 4)).save(data, 'JPEG')
  (folder / 'e_truncated.jpg').write_bytes(data.getvalue()[:len(data.getvalue()) // 2])
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise on display
  Image.fromarray(_photo(24, 40, 5)).save(folder / 'f_exif_rotated.jpg', exif=exif)
  stored = _photo(24, 40, 6)
  Image.fromarray(stored).save(folder / 'g_exif.png', exif=exif)
  Image.fromarray(np.rot90(stored, k=-1).copy()).save(folder / 'h_upright.png')
  (folder / 'i_not_an_image.png').write_text('hello')
  return folder


def _argv(images, checkpoint, out, *extra):
  return [f'--images={images}', f'--checkpoint={checkpoint}', f'--out={out}', '--split=train',
          '--grid=2', '--batch_size=8', '--chunk_size=3', '--max_error_fraction=0.5',
          f'--labels={checkpoint / "labels.txt"}', '--top_t=2', '--tag_threshold=0.0',
          '--num_workers=2', *extra]


def _records(out):
  return {r['image_id'].decode(): r for r in storage.read_dataset(str(out), 'train')
          .as_numpy_iterator()}


def test_extraction_writes_records_and_reports_bad_files(images, checkpoint, tmp_path):
  captions = tmp_path / 'captions.json'
  captions.write_text(json.dumps({'a_rgb': ['a photo of a dog'], 'b_rgb': ['two cats']}))
  out = tmp_path / 'out'
  assert extract_regions.main(_argv(images, checkpoint, out, f'--captions={captions}')) == 0
  records = _records(out)
  assert sorted(records) == ['a_rgb', 'b_rgb', 'c_gray', 'd_cmyk', 'f_exif_rotated', 'g_exif',
                             'h_upright']
  assert storage.read_metadata(str(out))['region_feature_dim'] == 16 + 6
  a = records['a_rgb']
  assert a['region_features'].shape == (5, 22) and a['image_png'] == b''
  assert list(a['image_size']) == [48, 64]
  np.testing.assert_allclose(a['boxes'][4], [0, 0, 64, 48])            # the whole image
  np.testing.assert_allclose(a['boxes'][1], [32, 0, 64, 24])           # top-right cell
  np.testing.assert_allclose(a['region_features'][1, -6:], [0.5, 0, 1, 0.5, 0.5, 0.5], atol=1e-6)
  assert [c.decode() for c in a['captions']] == ['a photo of a dog']
  assert len(records['c_gray']['captions']) == 0
  tags = {t.decode() for r in records.values() for t in r['tags']}
  assert tags <= set(LABELS) | {''} and tags & set(LABELS)
  assert all(len({t for t in r['tags'] if t}) <= 2 for r in records.values())
  # EXIF orientation 6: stored 40 wide x 24 high, shown 24 wide x 40 high.
  assert list(records['f_exif_rotated']['image_size']) == [40, 24]
  np.testing.assert_array_equal(records['g_exif']['region_features'],
                                records['h_upright']['region_features'])
  report = json.loads((out / 'train_extract_report.json').read_text())
  bad = {os.path.basename(p['file']): p['kind'] for p in report['problems']}
  assert bad == {'e_truncated.jpg': 'truncated', 'i_not_an_image.png': 'unreadable'}
  converted = {os.path.basename(c['file']): c['from_mode'] for c in report['converted']}
  assert converted == {'c_gray.png': 'L', 'd_cmyk.jpg': 'CMYK'}
  assert not (out / '.train.extract').exists()


def test_extraction_with_bins_and_crops(images, checkpoint, tmp_path):
  """--bins / --crops reach the extractor: k x k states a region, each region's own crop."""
  rows = {}
  for name, extra in (('plain', ()), ('crops', ('--crops', '--bins=2'))):
    assert extract_regions.main(_argv(images, checkpoint, tmp_path / name, *extra)) == 0
    rows[name] = _records(tmp_path / name)['a_rgb']['region_features']
  assert storage.read_metadata(str(tmp_path / 'crops'))['region_feature_dim'] == 4 * 16 + 6
  assert rows['plain'].shape == (5, 22) and rows['crops'].shape == (5, 70)
  np.testing.assert_array_equal(rows['crops'][:, -6:], rows['plain'][:, -6:])
  # A cell's crop through the tower is not the whole image's states pooled over the cell.
  assert np.abs(rows['crops'][1, :64].reshape(4, 16).mean(0) - rows['plain'][1, :16]).max() > 1e-3


def test_resume_after_a_kill_gives_the_identical_record_set(images, checkpoint, tmp_path):
  items = sources.from_folder(str(images))
  kwargs = dict(checkpoint=str(checkpoint), split='train', grid=2, batch_size=8, chunk_size=3,
                labels=LABELS, top_t=2, tag_threshold=0.0, max_error_fraction=0.5,
                num_workers=2, log=lambda m: None)
  extract_regions.extract(items, out=str(tmp_path / 'whole'), **kwargs)
  killed = tmp_path / 'killed'
  with pytest.raises(extract_regions.SimulatedKill):
    extract_regions.extract(items, out=str(killed), stop_after_chunks=2, **kwargs)
  work = killed / '.train.extract'
  assert sorted(os.listdir(work)) == ['chunk-000000.pkl', 'chunk-000001.pkl', 'manifest.json']
  assert not (killed / 'train').exists()  # nothing complete-looking after a kill
  (work / 'chunk-000002.pkl.tmp-999').write_bytes(b'half a chunk')  # killed mid-write
  with pytest.raises(extract_regions.ExtractionError, match='other inputs or settings'):
    extract_regions.extract(items, out=str(killed), **{**kwargs, 'grid': 3})
  with pytest.raises(extract_regions.ExtractionError, match='other inputs or settings'):
    extract_regions.extract(items, out=str(killed), **{**kwargs, 'crops': True})
  extract_regions.extract(items, out=str(killed), **kwargs)
  whole, resumed = _records(tmp_path / 'whole'), _records(killed)
  assert sorted(whole) == sorted(resumed) and len(whole) == 7
  for image_id, record in whole.items():
    np.testing.assert_array_equal(record['region_features'], resumed[image_id]['region_features'])
    assert list(record['tags']) == list(resumed[image_id]['tags'])
  with pytest.raises(FileExistsError):
    extract_regions.extract(items, out=str(killed), **kwargs)


def test_box_regions_from_a_coco_json(images, checkpoint, tmp_path):
  coco = {'images': [{'id': 7, 'file_name': 'a_rgb.jpg'}, {'id': 8, 'file_name': 'b_rgb.png'}],
          'annotations': [{'image_id': 7, 'bbox': [0, 0, 32, 24]},
                          {'image_id': 7, 'bbox': [30, 20, 50, 40]},  # crosses the right edge
                          {'image_id': 8, 'bbox': [5, 5, 10, 10]},
                          {'image_id': 7, 'caption': 'a gradient'}]}
  path = tmp_path / 'coco.json'
  path.write_text(json.dumps(coco))
  out = tmp_path / 'boxes'
  assert extract_regions.main([f'--coco_json={path}', f'--image_root={images}',
                               f'--checkpoint={checkpoint}', f'--out={out}', '--regions=boxes',
                               '--batch_size=8', '--notags', '--max_boxes=4']) == 0
  records = _records(out)
  assert sorted(records) == ['7', '8']
  np.testing.assert_allclose(records['7']['boxes'], [[0, 0, 32, 24], [30, 20, 64, 48]])
  np.testing.assert_allclose(records['7']['region_features'][1, -6:],
                             [30 / 64, 20 / 48, 1, 1, 34 / 64, 28 / 48], atol=1e-6)
  assert list(records['7']['tags']) == [b'', b''] and records['8']['region_features'].shape == (
      1, 22)
  assert [c.decode() for c in records['7']['captions']] == ['a gradient']
