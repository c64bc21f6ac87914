"""Hard-negative mining and random in-group partners (spec §2.5, §2.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import negatives

KEYS = jax.random.split(jax.random.PRNGKey(0), 16)


def _known_similarity():
  """[4, 4] sim whose diagonal is the largest entry of every row and column (so forgetting the
  −2·I would pair samples with themselves) and whose hardest negatives are known."""
  sim = np.array([[0.9, 0.1, 0.7, 0.2],
                  [0.3, 0.8, 0.0, 0.6],
                  [0.5, 0.4, 0.95, 0.1],
                  [0.0, 0.2, 0.3, 0.85]], np.float32)
  hardest_image = np.array([2, 3, 0, 2])   # argmax over each row without the diagonal
  hardest_text = np.array([2, 2, 0, 1])    # argmax over each column without the diagonal
  return sim, hardest_image, hardest_text


def _mine_many(sim, num_groups=1):
  mine = jax.jit(jax.vmap(lambda k: negatives.mine_hard_negatives(k, sim, num_groups)))
  txt, img = mine(KEYS)
  return np.asarray(txt), np.asarray(img)


def test_group_blocks():
  matrix = jnp.arange(36).reshape(6, 6)
  blocks = np.asarray(negatives.group_blocks(matrix, 2))
  np.testing.assert_array_equal(blocks[0], np.asarray(matrix)[:3, :3])
  np.testing.assert_array_equal(blocks[1], np.asarray(matrix)[3:, 3:])
  with pytest.raises(ValueError, match='divisible'):
    negatives.group_blocks(matrix, 4)


def test_hardest_negatives_and_half_split():
  sim, hardest_image, hardest_text = _known_similarity()
  txt, img = _mine_many(jnp.asarray(sim))
  assert txt.dtype == np.int32 and img.dtype == np.int32 and txt.shape == (16, 4)
  for t, i in zip(txt, img):
    # Rows 0-1 keep their text and take its hardest image; rows 2-3 keep their image.
    np.testing.assert_array_equal(i[:2], hardest_image[t[:2]])
    np.testing.assert_array_equal(t[2:], hardest_text[i[2:]])
    # The kept sides form a permutation of the batch: every sample is used once.
    np.testing.assert_array_equal(np.sort(np.concatenate([t[:2], i[2:]])), np.arange(4))
    assert (t != i).all()  # never a positive pair


def test_permutation_changes_with_the_key():
  sim, _, _ = _known_similarity()
  txt, img = _mine_many(jnp.asarray(sim))
  kept = {tuple(np.concatenate([t[:2], i[2:]])) for t, i in zip(txt, img)}
  assert len(kept) > 4  # 16 keys over 24 permutations
  again = negatives.mine_hard_negatives(KEYS[3], jnp.asarray(sim))
  np.testing.assert_array_equal(again[0], txt[3])  # same key, same choice
  np.testing.assert_array_equal(again[1], img[3])


def test_never_pairs_a_sample_with_itself_even_with_a_constant_similarity():
  txt, img = _mine_many(jnp.ones((6, 6)))
  assert (txt != img).all()


def test_no_gradient_through_the_choice():
  sim, _, _ = _known_similarity()
  grad = jax.grad(lambda s: negatives.mine_hard_negatives(KEYS[0], s)[1].astype(
      jnp.float32).sum())(jnp.asarray(sim))
  assert float(jnp.abs(grad).max()) == 0.0


def test_local_groups_keep_pairs_inside_their_group():
  sim, hardest_image, hardest_text = _known_similarity()
  full = np.full((8, 8), 0.99, np.float32)  # cross-group entries beat every in-group negative
  full[:4, :4] = sim
  full[4:, 4:] = sim.T  # group 1: rows and columns swap roles
  txt, img = _mine_many(jnp.asarray(full), num_groups=2)
  group_of_row = np.arange(8) // 4
  for t, i in zip(txt, img):
    np.testing.assert_array_equal(t // 4, group_of_row)
    np.testing.assert_array_equal(i // 4, group_of_row)
    assert (t != i).all()
    np.testing.assert_array_equal(i[:2], hardest_image[t[:2]])
    np.testing.assert_array_equal(t[2:4], hardest_text[i[2:4]])
    # In group 1 (sim transposed) the hardest image of a text is group 0's hardest text.
    np.testing.assert_array_equal(i[4:6] - 4, hardest_text[t[4:6] - 4])
    np.testing.assert_array_equal(t[6:] - 4, hardest_image[i[6:] - 4])
    np.testing.assert_array_equal(np.sort(np.concatenate([t[4:6], i[6:]])), np.arange(4, 8))
  # The global miner does cross groups here.
  txt, img = _mine_many(jnp.asarray(full))
  assert ((txt // 4) != (img // 4)).any()


def test_odd_group_sizes_and_errors():
  txt, img = _mine_many(jnp.asarray(np.random.RandomState(0).uniform(size=(6, 6))), 2)
  assert (txt // 3 == img // 3).all() and (txt != img).all()
  with pytest.raises(ValueError, match='at least 2'):
    negatives.mine_hard_negatives(KEYS[0], jnp.ones((4, 4)), 4)


def test_random_other_index():
  batch, groups = 12, 3
  draw = jax.jit(jax.vmap(lambda k: negatives.random_other_index(k, batch, groups)))
  other = np.asarray(draw(jax.random.split(jax.random.PRNGKey(1), 200)))
  assert other.dtype == np.int32
  samples = np.arange(batch)
  assert (other != samples).all()
  assert (other // 4 == samples // 4).all()
  # Every other member of the group is drawn, about uniformly (200 draws over 3 choices).
  for i in samples:
    values, counts = np.unique(other[:, i], return_counts=True)
    np.testing.assert_array_equal(values, [j for j in range(i // 4 * 4, i // 4 * 4 + 4) if j != i])
    assert counts.min() > 40
  # Global draws reach the whole batch, and the draw changes with the key.
  other = np.asarray(jax.vmap(lambda k: negatives.random_other_index(k, batch))(
      jax.random.split(jax.random.PRNGKey(2), 200)))
  assert (other != samples).all() and set(other[:, 0]) == set(range(1, batch))
  assert len({tuple(row) for row in other}) > 150
  with pytest.raises(ValueError, match='at least 2'):
    negatives.random_other_index(KEYS[0], 4, 4)
