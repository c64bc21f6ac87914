"""The standard retrieval protocol (mvp_jax/evaluators/protocol.py), checked against hand-made
answers and against the eccv-caption package on its real COCO 5k test list."""

import json

import numpy as np
import pytest

from input_pipeline.sources import karpathy
from mvp_jax.evaluators import protocol


def test_recalls_of_a_small_matrix():
  # 3 images x 2 captions each. Image 0's own captions rank 0; image 1's best own one has 2
  # above it; image 2's has 4 above. Caption 5 has 1 image above its own.
  sim = np.float32([[.9, .8, .1, .2, .3, .4],
                    [.95, .9, .5, .6, .1, .2],
                    [.9, .8, .7, .6, .5, .55]])
  caption_image = np.repeat([0, 1, 2], 2)
  np.testing.assert_array_equal(protocol.i2t_ranks(sim, caption_image), [0, 2, 4])
  np.testing.assert_array_equal(protocol.t2i_ranks(sim, caption_image), [1, 1, 1, 0, 0, 0])
  m = protocol.recalls(sim, caption_image, ks=(1, 3, 5))
  assert m['i2t_r1'] == pytest.approx(100 / 3) and m['i2t_r3'] == pytest.approx(200 / 3)
  assert m['t2i_r1'] == 50.0 and m['t2i_r3'] == 100.0
  with pytest.raises(ValueError, match='expects 1000 images'):
    protocol.evaluate('flickr_1k', sim, caption_image)


eccv_caption = pytest.importorskip('eccv_caption')


def _known_answer_similarity():
  """[5000, 25000] float16 in Karpathy order whose R@K are known (see the tiers below)."""
  rng = np.random.default_rng(0)
  sim = np.empty((5000, 25000), np.float16)
  for start in range(0, 5000, 500):
    sim[start:start + 500] = rng.uniform(0.01, 0.8, (500, 25000))
  tier = {p: t for t, ps in ((1, range(4)), (2, (4, 5)), (3, (6,)), (4, (7, 8, 9))) for p in ps}
  for i in range(5000):
    t = tier[i % 10]
    sim[i, 5 * i:5 * i + 5] = {1: 1.0, 2: 0.9, 3: 0.9, 4: 0.0}[t]
    if t == 2:      # 3 captions of a tier-1 image of the same fold above: i2t rank 3
      sim[i, 5 * (i - 4):5 * (i - 4) + 3] = 0.95
    if t == 3:      # 7 tier-1 images of the same fold above each own caption: t2i rank 7
      decade, step = i - 6, 10 if i % 1000 < 990 else -10
      others = [decade + k for k in range(4)] + [decade + step + k for k in range(3)]
      for j in others:
        sim[j, 5 * i:5 * i + 5] = 0.95
  # i2t hits: R@1 tiers 1, 3 (50%); R@5, R@10 tiers 1-3 (70%). t2i: R@1, R@5 tiers 1, 2 (60%);
  # R@10 tiers 1-3 (70%).
  expected = {'i2t_r1': 50.0, 'i2t_r5': 70.0, 'i2t_r10': 70.0, 't2i_r1': 60.0, 't2i_r5': 60.0,
              't2i_r10': 70.0, 'rsum': 380.0}
  return sim, expected


def test_our_5k_ids_and_folds_equal_eccv_caption(tmp_path):
  ids = protocol.coco_5k_image_ids()
  assert len(ids) == 5000 and ids[0] == '391895'
  images = [{'filename': f'COCO_val2014_{int(i):012d}.jpg', 'filepath': 'val2014',
             'cocoid': int(i), 'split': 'test', 'sentences': [{'raw': 'a photo'}] * 5}
            for i in ids]
  images.insert(1234, {'filename': 'x.jpg', 'cocoid': 1, 'split': 'val',
                       'sentences': [{'raw': 'a photo'}] * 5})
  (tmp_path / 'dataset_coco.json').write_text(json.dumps({'dataset': 'coco', 'images': images}))
  ours = karpathy.KarpathySource(tmp_path / 'dataset_coco.json', tmp_path).image_ids('test')
  protocol.check_coco_test_ids(ours)
  caption_ids = protocol.coco_5k_caption_ids()
  metrics = eccv_caption.Metrics()
  for f in range(5):  # eccv-caption's folds: 5,000 consecutive caption ids -> their images.
    theirs = {str(metrics.coco_gts['t2i'][int(c)][0]) for c in caption_ids[5000 * f:5000 * (f + 1)]}
    assert set(ours[1000 * f:1000 * (f + 1)]) == theirs
  swapped = ours[:10] + [ours[11], ours[10]] + ours[12:]
  with pytest.raises(ValueError, match='first position that differs 10'):
    protocol.check_coco_test_ids(swapped)
  with pytest.raises(ValueError, match=r"missing \['391895'\]"):
    protocol.check_coco_test_ids(ours[1:])


def test_recall_equals_eccv_caption_on_a_known_answer():
  sim, expected = _known_answer_similarity()
  caption_image = np.arange(25000) // 5
  five_k = protocol.evaluate('coco_5k', sim, caption_image)
  one_k = protocol.evaluate('coco_1k', sim, caption_image)
  assert five_k == pytest.approx(expected) and one_k == pytest.approx(expected)

  image_ids = [int(i) for i in protocol.coco_5k_image_ids()]
  caption_ids = protocol.coco_5k_caption_ids()
  retrieved = {'i2t': protocol.retrieved_lists(sim, image_ids, caption_ids, 10, groups=5),
               't2i': protocol.retrieved_lists(sim.T, caption_ids, image_ids, 10, groups=5)}
  metrics = eccv_caption.Metrics()
  for k in (1, 5, 10):
    theirs_5k = metrics.coco_5k_recalls(retrieved, 'all', K=k)
    theirs_1k = metrics.coco_1k_recalls(retrieved, 'all', K=k)
    for direction in ('i2t', 't2i'):
      assert five_k[f'{direction}_r{k}'] == pytest.approx(100 * theirs_5k[direction])
      assert one_k[f'{direction}_r{k}'] == pytest.approx(100 * theirs_1k[direction])


def test_eccv_extended_metrics_pair_each_column_with_its_own_caption_id():
  metrics = eccv_caption.Metrics()
  image_ids = [int(i) for i in protocol.coco_5k_image_ids()]
  ascending = protocol.coco_5k_caption_ids()
  # A build whose captions of every image are not in ascending COCO id order (what
  # protocol.built_caption_ids gives for it): column 5 i + k holds that caption's own id.
  built = np.roll(ascending.reshape(5000, 5), 1, axis=1).ravel()
  column = {int(c): j for j, c in enumerate(built)}
  row = {image: i for i, image in enumerate(image_ids)}
  sim = np.random.default_rng(1).uniform(0, 0.5, (5000, 25000)).astype(np.float16)
  for i, image in enumerate(image_ids):   # every ECCV positive caption of an image scores 1
    for c in metrics.eccv_gts['i2t'].get(image, []):
      if c in column:     # a few ECCV positives are COCO captions beyond the first 5
        sim[i, column[c]] = 1.0
  for c, images in metrics.eccv_gts['t2i'].items():   # and every ECCV positive image of a caption
    for image in images:
      sim[row[image], column[c]] = 1.0
  scores = protocol.eccv_metrics(sim, caption_ids=built)
  # Perfect but for the few ECCV positives outside the 25,000 test captions.
  assert 99.9 < scores['eccv_map_at_r_i2t'] < 100.0
  assert 99.9 < scores['eccv_rprecision_i2t'] <= 100.0
  assert scores['eccv_r1_i2t'] == pytest.approx(100.0)
  assert scores['eccv_r1_t2i'] == pytest.approx(100.0)
  assert scores['eccv_map_at_r_t2i'] == pytest.approx(100.0)
  assert {'eccv_map_at_r_t2i', 'cxc_r1_i2t', 'cxc_r10_t2i'} <= set(scores)
  assert 0.0 <= scores['cxc_r1_t2i'] < 50.0      # random for captions: far from perfect
  assert not any(k.startswith('pmrp') for k in scores)  # PM files are not shipped
  # The old pairing (column 5 i + k = image i's k-th smallest caption id) scores other captions.
  old = protocol.eccv_metrics(sim, caption_ids=ascending)
  assert old['eccv_map_at_r_i2t'] < 50.0 and old['eccv_map_at_r_t2i'] < 50.0
  swapped = built.copy()
  swapped[[4, 5]] = swapped[[5, 4]]   # one caption of image 0 and one of image 1
  with pytest.raises(ValueError, match=r'column 4: COCO caption \d+ belongs to image 60623'):
    protocol.check_eccv_caption_ids(image_ids, swapped)
  with pytest.raises(ValueError, match="not eccv-caption's 25,000"):
    protocol.check_eccv_caption_ids(image_ids, np.where(np.arange(25000) == 7, 1, built))
