"""The end-of-run report of the quickstart: the summary beside chance levels and the grounding
picture (PNG in the workdir and a TensorBoard image)."""

import glob
import os

import flax.linen as nn
import jax
import numpy as np
from PIL import Image
import tensorflow as tf

from configs import mvp_tiny
from mvp_jax import data
from mvp_jax import model as model_lib
from mvp_jax import quickstart
from mvp_jax import train


def test_summary_puts_each_number_beside_its_chance():
  text = quickstart.summary({'retrieval/truth_t2i_R@1': 0.5, 'retrieval/truth_t2i_chance_R@1':
                             0.125, 'retrieval/t2i_R@1': 0.25, 'retrieval/num_images': 200.0,
                             'val/grounding_accuracy': 0.75, 'val/grounding_chance': 0.2,
                             'train/itm_accuracy': 0.875})
  lines = text.splitlines()
  assert lines[1].split()[-2:] == ['0.500', '0.125']
  assert lines[2].split()[-2:] == ['0.250', '0.005']  # single positive: 1 / images
  assert lines[3].split()[-2:] == ['0.750', '0.200']
  assert lines[4].split()[-2:] == ['0.875', '0.500']
  assert len(lines) == 5  # rows without a result are left out


def test_grounding_picture_is_written(tmp_path):
  config = mvp_tiny.get_config('smoke')
  config.data.shapesworld.update(num_train_images=6, num_val_images=4, image_size=32)
  config.data.shapesworld['min_concept_count'] = 1
  directory = data.prepare_dataset(config.data, str(tmp_path))
  model_cfg = train.model_config(config, directory)
  batch = next(iter(data.create_iterator(config.data, directory, 'val', per_host_batch_size=2,
                                         seed=0, train=False, corrupt=False)))
  params = nn.unbox(model_lib.init_params(model_cfg, jax.random.PRNGKey(0),
                                          data.model_inputs(batch)))
  picture = quickstart.grounding_picture(config, directory, model_cfg, params)
  assert picture.dtype == np.uint8 and picture.shape[0] > 4 * 32 and picture.shape[2] == 3
  path = quickstart.write_picture(str(tmp_path), picture, 7)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
  events = glob.glob(os.path.join(str(tmp_path), 'events.out.tfevents.*'))
  tags = {(e.step, v.tag) for f in events for e in tf.compat.v1.train.summary_iterator(f)
          for v in e.summary.value}
  assert (7, 'grounding') in tags
