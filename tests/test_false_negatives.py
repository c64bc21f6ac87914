"""False negatives left out of ITC and of hard-negative mining (`true_matches`), checked against
numpy computed by hand on a batch with duplicate captions."""

import jax
import jax.numpy as jnp
import numpy as np

from mvp_jax import losses
from mvp_jax import negatives

# Captions 0 and 1 are the same sentence ("a circle"), true of images 0 and 1; caption 2 only of
# image 2; caption 3 of images 3 and 1.
CAPTION_MEANING = np.array([0, 0, 1, 2], np.int32)
IMAGE_MEANINGS = np.array([[0, -1], [0, 2], [1, -1], [2, -1]], np.int32)
TRUE = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 1]], bool)
SIM = np.array([[0.9, 0.8, 0.1, 0.3],
                [0.7, 0.6, 0.2, 0.5],
                [0.4, 0.3, 0.8, 0.1],
                [0.2, 0.9, 0.6, 0.7]], np.float32)


def test_true_match_mask_from_the_batch_columns():
  mask = losses.true_match_mask(jnp.asarray(CAPTION_MEANING), jnp.asarray(IMAGE_MEANINGS))
  np.testing.assert_array_equal(mask, TRUE)
  padded = losses.true_match_mask(jnp.array([-1, 0]), jnp.array([[-1, -1], [0, -1]]))
  np.testing.assert_array_equal(padded, [[0, 0], [0, 1]])  # a padding row matches nothing


def _by_hand_itc(sim, scale, exclude):
  logits = sim * np.exp(scale)
  loss = 0.0
  for view in (logits, logits.T):
    keep = ~(exclude if view is logits else exclude.T)
    for i in range(len(view)):
      row = view[i][keep[i]]
      loss += -(view[i, i] - np.log(np.exp(row).sum())) / len(view)
  return loss / 2


def test_contrastive_loss_leaves_true_matches_out_of_both_denominators():
  scale = np.float32(np.log(10.0))
  exclude = TRUE & ~np.eye(4, dtype=bool)
  loss, metrics = losses.contrastive_loss(jnp.asarray(SIM), scale, true_matches=jnp.asarray(TRUE))
  np.testing.assert_allclose(loss, _by_hand_itc(SIM, scale, exclude), rtol=1e-6)
  plain, _ = losses.contrastive_loss(jnp.asarray(SIM), scale)
  np.testing.assert_allclose(plain, _by_hand_itc(SIM, scale, np.zeros((4, 4), bool)), rtol=1e-6)
  assert float(plain) > float(loss)
  # Text 3's best image is image 1, a true match: not a t2i error once it is excluded.
  assert int(metrics['t2i_correct']) == 4
  grads = jax.grad(lambda s: losses.contrastive_loss(s, scale, true_matches=jnp.asarray(TRUE))[0])(
      jnp.asarray(SIM))
  assert np.isfinite(grads).all() and np.all(np.asarray(grads)[exclude] == 0)
  # Per group (local negatives): groups {0, 1} and {2, 3}; only the diagonal blocks are read.
  local, _ = losses.contrastive_loss(jnp.asarray(SIM), scale, 2, jnp.asarray(TRUE))
  by_hand = np.mean([_by_hand_itc(SIM[g:g + 2, g:g + 2], scale, exclude[g:g + 2, g:g + 2])
                     for g in (0, 2)])
  np.testing.assert_allclose(local, by_hand, rtol=1e-5)


def _check_pairs(txt, img, hardest_image, hardest_text):
  half = len(txt) // 2
  for k in range(half):  # text side: the text keeps itself, paired with its hardest image
    assert img[k] == hardest_image[txt[k]]
  for k in range(half, len(txt)):  # image side
    assert txt[k] == hardest_text[img[k]]
  assert sorted(txt[:half].tolist() + img[half:].tolist()) == list(range(len(txt)))


def test_hard_negatives_skip_true_matches():
  hardest = lambda s: (np.argmax(s, 1), np.argmax(s, 0))
  plain_image, plain_text = hardest(SIM - 2 * np.eye(4))
  assert plain_image[0] == 1 and plain_image[3] == 1  # the reference picks true matches
  masked = np.where(TRUE, -10.0, SIM)  # by hand: the hardest among the false pairs
  true_image, true_text = hardest(masked)
  for seed in range(2):
    txt, img = negatives.mine_hard_negatives(jax.random.PRNGKey(seed), jnp.asarray(SIM), 1,
                                             jnp.asarray(TRUE))
    _check_pairs(np.asarray(txt), np.asarray(img), true_image, true_text)
    assert not TRUE[np.asarray(txt), np.asarray(img)].any()
    txt, img = negatives.mine_hard_negatives(jax.random.PRNGKey(seed), jnp.asarray(SIM))
    _check_pairs(np.asarray(txt), np.asarray(img), plain_image, plain_text)


def test_all_true_falls_back_to_a_true_match_never_the_sample_itself():
  everything = jnp.ones((4, 4), bool)
  txt, img = negatives.mine_hard_negatives(jax.random.PRNGKey(0), jnp.asarray(SIM), 1,
                                           everything)
  assert (np.asarray(txt) != np.asarray(img)).all()
  _check_pairs(np.asarray(txt), np.asarray(img), *(
      lambda s: (np.argmax(s, 1), np.argmax(s, 0)))(SIM - 8 * np.eye(4)))


def test_sampled_negatives_follow_the_temperature():
  sim = jnp.asarray(SIM)
  cold = negatives.mine_hard_negatives(jax.random.PRNGKey(1), sim, 1, jnp.asarray(TRUE), 1e-4)
  hard = negatives.mine_hard_negatives(jax.random.PRNGKey(1), sim, 1, jnp.asarray(TRUE))
  np.testing.assert_array_equal(cold[0], hard[0])
  np.testing.assert_array_equal(cold[1], hard[1])
  seen = set()
  for seed in range(12):
    txt, img = negatives.mine_hard_negatives(jax.random.PRNGKey(seed), sim, 1, jnp.asarray(TRUE),
                                             0.3)
    assert not TRUE[np.asarray(txt), np.asarray(img)].any()
    seen.update(zip(np.asarray(txt).tolist(), np.asarray(img).tolist()))
  assert len(seen) > 4  # not always the hardest
