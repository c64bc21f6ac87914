"""Fine-tuning losses and task metrics on hand-made inputs (spec §4)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax.downstream import losses
from mvp_jax.downstream import metrics


def test_retrieval_labels_are_one_for_positives_then_zero():
  np.testing.assert_array_equal(losses.matching_labels(3), [1, 1, 1, 0, 0, 0])
  sim = jnp.eye(3)
  # Logits agreeing with label 1 = matched on the positives and 0 on the negatives.
  agree = jnp.array([[-9.0, 9.0]] * 3 + [[9.0, -9.0]] * 3)
  loss, m = losses.retrieval_loss(sim, jnp.log(100.0), agree)
  np.testing.assert_allclose(m['loss_itm'], 0.0, atol=1e-6)
  assert int(m['itm_correct']) == 6 and int(m['itm_count']) == 6
  np.testing.assert_allclose(loss, m['loss_itc'] + m['loss_itm'], rtol=1e-6)
  # The pre-training convention (0 = matched) is maximally wrong here.
  _, flipped = losses.retrieval_loss(sim, jnp.log(100.0), -agree)
  assert int(flipped['itm_correct']) == 0
  np.testing.assert_allclose(flipped['loss_itm'], 18.0, atol=1e-5)


def test_vqa_bce_is_summed_over_answers_and_averaged_over_questions():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
  targets = jnp.array([[1.0, 0.0, 0.3], [0.0, 0.6, 0.0]])
  loss, m = losses.vqa_loss(logits, targets)
  x, z = np.asarray(logits), np.asarray(targets)
  bce = np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))
  np.testing.assert_allclose(loss, bce.sum() / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.vqa_loss_per_example(logits, targets), bce.sum(1), rtol=1e-6)
  np.testing.assert_allclose(m['vqa_correct'], 1.0 + 0.6, rtol=1e-6)


def test_vqa_soft_accuracy_on_hand_made_answers():
  # Three questions over answers (yes, no, 2, red): argmax picks yes, 2, red.
  logits = jnp.array([[5.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
  targets = jnp.array([[1.0, 0.0, 0.0, 0.0],    # yes: all annotators -> 1
                       [0.0, 0.0, 0.3, 1.0],    # "2" said by one annotator -> 0.3
                       [0.0, 0.0, 0.0, 0.0]])   # red: nobody -> 0
  scores = metrics.vqa_scores(logits, targets)
  np.testing.assert_allclose(scores, [1.0, 0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(scores.sum() / 3, 1.3 / 3, rtol=1e-6)


def test_ve_cross_entropy_and_accuracy():
  logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 0.0]])
  labels = jnp.array([0, 2, 0])  # contradiction, entailment, contradiction
  loss, m = losses.classification_loss(logits, labels)
  log_probs = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(1, keepdims=True))
  np.testing.assert_allclose(loss, -log_probs[np.arange(3), labels].mean(), rtol=1e-6)
  np.testing.assert_array_equal(metrics.classification_correct(logits, labels), [1, 1, 0])
  assert int(m['ve_correct']) == 2


def test_re_mse_ignores_padded_regions():
  logits = jnp.array([[0.9, 0.1, 5.0], [0.2, 0.4, 0.0]])
  iou = jnp.array([[0.8, 0.0, -1.0], [0.1, 0.6, 0.3]])  # the 5.0 sits on a padded region
  loss, m = losses.referring_loss(logits, iou)
  expected = ((0.9 - 0.8) ** 2 + 0.1 ** 2 + 0.1 ** 2 + 0.2 ** 2 + 0.3 ** 2) / 5
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Row 0 picks region 0 (IoU 0.8), not the padded 5.0; row 1 picks region 1 (IoU 0.6).
  assert int(m['re_correct']) == 2
  np.testing.assert_array_equal(metrics.referring_prediction(logits, iou), [0, 1])


@pytest.mark.parametrize('iou_of_pick, correct', [(0.5, 1.0), (0.49, 0.0), (0.95, 1.0)])
def test_re_accuracy_threshold_is_inclusive(iou_of_pick, correct):
  logits = jnp.array([[0.1, 0.7, 0.3]])
  iou = jnp.array([[0.9, iou_of_pick, -1.0]])
  np.testing.assert_array_equal(metrics.referring_correct(logits, iou), [correct])


def test_re_without_valid_regions_is_zero_not_nan():
  loss, m = losses.referring_loss(jnp.zeros((2, 3)), -jnp.ones((2, 3)))
  assert float(loss) == 0.0 and int(m['re_correct']) == 0


def test_referring_loss_local_groups_average_per_group_region_means():
  """Issue 10 item 4: valid regions differ per example, so groups are averaged explicitly."""
  logits = jnp.asarray([[0.9, 0.1, 0.0], [0.2, 0.0, 0.0]], jnp.float32)
  iou = jnp.asarray([[1.0, 0.0, 0.5], [0.0, -1.0, -1.0]], jnp.float32)
  group0 = np.mean([(0.9 - 1.0) ** 2, 0.1 ** 2, 0.5 ** 2])
  group1 = 0.2 ** 2
  loss, _ = losses.referring_loss(logits, iou, num_groups=2)
  np.testing.assert_allclose(loss, (group0 + group1) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.referring_loss(logits, iou)[0],
                             (3 * group0 + group1) / 4, rtol=1e-6)
