"""What the eccv-caption package ships for the COCO 5k test (issue 14 item 3), as
mvp_jax/evaluators/protocol.py reads it: 25,000 COCO caption ids, 5 per image in Karpathy image
order, ascending within an image. That order is the package's own, not a pairing of similarity
columns with captions: protocol.eccv_metrics takes each column's id from the build
(test_coco_caption_ids.py)."""

import json
import os

import numpy as np
import pytest

from mvp_jax.evaluators import protocol

eccv_caption = pytest.importorskip('eccv_caption')


def _package_file(name):
  with open(os.path.join(os.path.dirname(eccv_caption.__file__), 'data', name),
            encoding='utf-8') as f:
    return json.load(f)


def test_caption_ids_are_five_per_image_in_karpathy_image_order_smallest_first():
  caption_ids = protocol.coco_5k_caption_ids()
  image_ids = protocol.coco_5k_image_ids()
  assert caption_ids.shape == (25000,) and len(set(caption_ids.tolist())) == 25000
  caption_to_image = _package_file('original_caption_to_image.json')
  image_to_caption = _package_file('original_image_to_caption.json')
  groups = caption_ids.reshape(5000, 5)
  for i, group in enumerate(groups):
    # The 5 consecutive ids are exactly image i's captions in eccv-caption's own ground truth.
    assert {str(caption_to_image[str(c)][0]) for c in group} == {image_ids[i]}
    assert sorted(image_to_caption[image_ids[i]]) == group.tolist()
  # Within an image: ascending id (eccv-caption's own image_to_caption lists them in another
  # order, e.g. image 179765, so no order of ids says which caption a column is).
  assert (np.diff(groups, axis=1) > 0).all()
  assert image_ids[:3] == ['391895', '60623', '483108']  # Karpathy's first test images


def test_eccv_ground_truth_of_our_columns_is_the_image_of_that_row():
  caption_ids = protocol.coco_5k_caption_ids()
  image_ids = protocol.coco_5k_image_ids()
  metrics = eccv_caption.Metrics()
  for column in (0, 4, 5, 12_345, 24_999):
    assert str(metrics.coco_gts['t2i'][int(caption_ids[column])][0]) == image_ids[column // 5]
