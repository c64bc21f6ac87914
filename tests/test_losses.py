"""The five pre-training losses on hand-made inputs with known answers (spec §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvp_jax import losses


def _log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _numpy_contrastive(sim, scale):
  """½[CE(rows, arange) + CE(columns, arange)] written out in numpy."""
  logits = np.asarray(sim, np.float64) * np.exp(scale)
  diag = np.arange(len(sim))
  rows = -_log_softmax(logits, 1)[diag, diag].mean()
  cols = -_log_softmax(logits, 0)[diag, diag].mean()
  return 0.5 * (rows + cols)


# ------------------------------------------------------------------------------ contrastive (ITC)

def test_contrastive_perfectly_aligned_is_zero():
  loss, metrics = losses.contrastive_loss(jnp.eye(4) * 2 - 1, jnp.log(100.0))
  # Off-diagonal logits are 200 below the diagonal: exp(-200) vanishes in float32.
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  assert int(metrics['t2i_correct']) == int(metrics['i2t_correct']) == int(metrics['count']) == 4


def test_contrastive_two_by_two_by_hand():
  sim = np.array([[0.9, 0.3], [0.5, 0.1]], np.float32)
  scale = np.log(2.0)
  # Rows: logits [1.8, .6] (target 0) and [1., .2] (target 1); columns [1.8, 1.] and [.6, .2].
  by_hand = 0.5 * (0.5 * (np.log1p(np.exp(-1.2)) + np.log1p(np.exp(0.8)))
                   + 0.5 * (np.log1p(np.exp(-0.8)) + np.log1p(np.exp(0.4))))
  loss, metrics = losses.contrastive_loss(jnp.asarray(sim), jnp.asarray(scale, jnp.float32))
  np.testing.assert_allclose(loss, by_hand, rtol=1e-6)
  np.testing.assert_allclose(loss, _numpy_contrastive(sim, scale), rtol=1e-6)
  # Text 1 prefers image 0 (.5 > .1); image 1 prefers text 0 (.3 > .1).
  assert int(metrics['t2i_correct']) == 1 and int(metrics['i2t_correct']) == 1


def test_contrastive_is_asymmetric_in_rows_and_columns():
  sim = np.random.RandomState(0).uniform(-1, 1, (5, 5)).astype(np.float32)
  loss, _ = losses.contrastive_loss(jnp.asarray(sim), jnp.float32(2.0))
  np.testing.assert_allclose(loss, _numpy_contrastive(sim, 2.0), rtol=1e-5)


def test_contrastive_local_groups_average_per_group_losses():
  sim = np.random.RandomState(1).uniform(-1, 1, (6, 6)).astype(np.float32)
  scale = jnp.float32(1.5)
  loss, metrics = losses.contrastive_loss(jnp.asarray(sim), scale, num_groups=2)
  first = _numpy_contrastive(sim[:3, :3], 1.5)
  second = _numpy_contrastive(sim[3:, 3:], 1.5)
  np.testing.assert_allclose(loss, 0.5 * (first + second), rtol=1e-5)
  # The off-diagonal blocks are not negatives: changing them changes nothing ...
  changed = sim.copy()
  changed[:3, 3:] = 5.0
  changed[3:, :3] = -5.0
  np.testing.assert_allclose(losses.contrastive_loss(jnp.asarray(changed), scale, 2)[0], loss,
                             rtol=1e-6)
  # ... while the global loss sees them.
  assert abs(float(losses.contrastive_loss(jnp.asarray(changed), scale)[0]) - float(loss)) > 0.1
  assert int(metrics['count']) == 6
  with pytest.raises(ValueError, match='divisible'):
    losses.contrastive_loss(jnp.asarray(sim), scale, num_groups=4)


# ------------------------------------------------------------------------------ matching (ITM)

def test_matching_loss_known_values():
  # Uninformative logits: log 2 per row.
  loss, metrics = losses.matching_loss(jnp.zeros((6, 2)))
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  assert int(metrics['count']) == 6
  # Label 0 for the first half (positives), 1 for the second half (negatives).
  logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, -1.0]], np.float32)
  per_row = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(-3.0)),
             np.log1p(np.exp(2.0))]
  loss, metrics = losses.matching_loss(jnp.asarray(logits))
  np.testing.assert_allclose(loss, np.mean(per_row), rtol=1e-6)
  assert int(metrics['correct']) == 2  # rows 0 and 2


# ------------------------------------------------------------------------------ MLM / MCR

def test_masked_token_loss_matches_numpy_and_ignores_minus_one():
  rng = np.random.RandomState(2)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  labels = np.array([[-1, 3, -1, 0, -1], [6, -1, -1, -1, 2]], np.int32)
  loss, metrics = losses.masked_token_loss(jnp.asarray(logits), jnp.asarray(labels))
  b, t = np.nonzero(labels >= 0)
  expected = -_log_softmax(logits.astype(np.float64))[b, t, labels[b, t]].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert int(metrics['count']) == 4
  assert int(metrics['correct']) == int((logits[b, t].argmax(-1) == labels[b, t]).sum())
  # Logits at ignored positions do not matter.
  logits[labels < 0] = 1e3 * rng.normal(size=logits[labels < 0].shape)
  np.testing.assert_allclose(losses.masked_token_loss(jnp.asarray(logits), labels)[0], expected,
                             rtol=1e-6)


def test_masked_language_and_concept_slices():
  rng = np.random.RandomState(3)
  logits = jnp.asarray(rng.normal(size=(2, 6, 5)).astype(np.float32))
  labels = jnp.asarray(np.array([[1, -1, 4], [-1, 2, -1]], np.int32))
  direct, _ = losses.masked_token_loss(logits[:, :3], labels)
  np.testing.assert_allclose(losses.masked_language_loss(logits, labels)[0], direct)
  np.testing.assert_allclose(losses.masked_concept_loss(logits, labels)[0], direct)


def test_masked_token_loss_without_targets_is_zero_with_finite_gradient():
  logits = jnp.asarray(np.random.RandomState(4).normal(size=(3, 4, 6)), jnp.float32)
  labels = -jnp.ones((3, 4), jnp.int32)
  loss, metrics = losses.masked_token_loss(logits, labels)
  assert float(loss) == 0.0 and int(metrics['count']) == 0
  grad = jax.grad(lambda x: losses.masked_token_loss(x, labels)[0])(logits)
  assert np.isfinite(grad).all() and float(jnp.abs(grad).max()) == 0.0


# ------------------------------------------------------------------------------ WPG

TEXT_LEN = 4        # positions 0..3; phrases at [1, 3)
NUM_REGIONS = 4     # positions 4..7
LENGTH = TEXT_LEN + NUM_REGIONS
HIDDEN = 6


def _wpg_sequence(phrase_vectors, region_vectors, num_real_regions=(4, 4), seed=0):
  """A [2, 8, 6] cross sequence: sample b's phrases are phrase_vectors[b], its real regions
  region_vectors[b] (each scaled by a random positive norm); other slots are random noise."""
  rng = np.random.RandomState(seed)
  sequence = rng.normal(size=(2, LENGTH, HIDDEN)).astype(np.float32)
  for b in range(2):
    sequence[b, 1:3] = phrase_vectors[b] * rng.uniform(0.5, 3.0, (2, 1))
    real = num_real_regions[b]
    sequence[b, TEXT_LEN:TEXT_LEN + real] = region_vectors[b] * rng.uniform(0.5, 3.0, (real, 1))
  phrase_index = np.array([[1, 3], [1, 3]], np.int32)
  img_index = np.array([[TEXT_LEN, TEXT_LEN + n] for n in num_real_regions], np.int32)
  return jnp.asarray(sequence), jnp.asarray(phrase_index), jnp.asarray(img_index)


def _unit(*values):
  vector = np.zeros(HIDDEN, np.float32)
  vector[:len(values)] = values
  return vector


def test_wpg_aligned_phrases_give_zero_hinge():
  # Phrases of i equal the regions of i (cos 1) and are orthogonal to the other image's regions.
  e0, e1 = _unit(1), _unit(0, 1)
  sequence, phrase_index, img_index = _wpg_sequence([e0, e1], [e0, e1])
  loss, metrics = losses.phrase_grounding_loss(jax.random.PRNGKey(0), sequence, phrase_index,
                                               img_index)
  assert float(loss) == 0.0  # max(0, 0 + 0.2 - 1)
  np.testing.assert_allclose(metrics['pos'], 1.0, atol=1e-6)
  np.testing.assert_allclose(metrics['neg'], 0.0, atol=1e-6)
  assert int(metrics['count']) == 2


def test_wpg_known_positive_hinge_and_padding_regions_ignored():
  # Sample 0: phrase e0, regions u (cos 0.6 with e0). Sample 1: phrase e1, 3 real regions v
  # (cos 0.8 with e0, 0.6 with e1). pos = (0.6, 0.6), neg = (cos(e0, v), cos(e1, u)) = (0.8, 0).
  e0, e1 = _unit(1), _unit(0, 1)
  u, v = _unit(0.6, 0, 0.8), _unit(0.8, 0.6)
  sequence, phrase_index, img_index = _wpg_sequence([e0, e1], [u, v], num_real_regions=(4, 3))
  # Sample 1's padding region slot equals e0: if it counted, sample 0's negative would be 1.
  sequence = sequence.at[1, LENGTH - 1].set(jnp.asarray(e0))
  loss, metrics = losses.phrase_grounding_loss(jax.random.PRNGKey(1), sequence, phrase_index,
                                               img_index)
  hinge = [max(0.0, 0.8 + 0.2 - 0.6), max(0.0, 0.0 + 0.2 - 0.6)]  # [0.4, 0]
  np.testing.assert_allclose(loss, np.mean(hinge), atol=1e-6)
  np.testing.assert_allclose(metrics['pos'], 0.6, atol=1e-6)
  np.testing.assert_allclose(metrics['neg'], 0.4, atol=1e-6)
  # A larger margin is honoured.
  loss, _ = losses.phrase_grounding_loss(jax.random.PRNGKey(1), sequence, phrase_index,
                                         img_index, margin=0.5)
  np.testing.assert_allclose(loss, 0.5 * (0.7 + 0.0), atol=1e-6)


def test_wpg_samples_without_phrases_are_left_out_of_the_mean():
  e0, e1 = _unit(1), _unit(0, 1)
  u, v = _unit(0.6, 0, 0.8), _unit(0.8, 0.6)
  sequence, phrase_index, img_index = _wpg_sequence([e0, e1], [u, v])
  phrase_index = phrase_index.at[1].set(jnp.array([1, 1]))  # sample 1 has no phrase
  loss, metrics = losses.phrase_grounding_loss(jax.random.PRNGKey(2), sequence, phrase_index,
                                               img_index)
  np.testing.assert_allclose(loss, 0.4, atol=1e-6)  # sample 0 alone, not (0.4 + 0) / 2
  assert int(metrics['count']) == 1


def test_wpg_batch_without_phrases_is_zero_with_finite_gradient():
  sequence, _, img_index = _wpg_sequence([_unit(1)] * 2, [_unit(1)] * 2)
  sequence = sequence.at[0, 0].set(0.0)  # an all-zero slot must not NaN the normalisation
  no_phrases = jnp.array([[1, 1], [2, 2]], jnp.int32)

  def loss_fn(x):
    return losses.phrase_grounding_loss(jax.random.PRNGKey(3), x, no_phrases, img_index)[0]

  loss, grad = jax.value_and_grad(loss_fn)(sequence)
  assert float(loss) == 0.0
  assert np.isfinite(grad).all() and float(jnp.abs(grad).max()) == 0.0


def test_top_k_pick_is_always_one_of_the_top_three():
  rng = np.random.RandomState(5)
  similarity = jnp.asarray(rng.uniform(-1, 1, (3, 1, 6)), jnp.float32)  # one phrase per sample
  region_mask = jnp.asarray(np.array([[1, 1, 1, 1, 1, 1],    # 6 regions
                                      [1, 1, 0, 0, 0, 0],    # 2 regions
                                      [0, 0, 0, 0, 0, 0]],   # none
                                     bool))
  phrase_mask = jnp.ones((3, 1), bool)
  keys = jax.random.split(jax.random.PRNGKey(0), 200)
  picked = np.asarray(jax.vmap(
      lambda k: losses.sampled_top_k_similarity(k, similarity, phrase_mask, region_mask))(keys))
  values = np.asarray(similarity)[:, 0]
  top3 = np.sort(values[0])[-3:]
  assert set(np.unique(picked[:, 0])) == set(top3)      # only, and uniformly all, the top 3
  assert 40 < np.mean(picked[:, 0] == top3[0]) * 200 < 95
  assert set(np.unique(picked[:, 1])) == set(values[1, :2])  # both real regions, no padding
  assert (picked[:, 2] == 0.0).all()                     # no region: 0, not -inf
  # Without phrases the mean is 0.
  empty = losses.sampled_top_k_similarity(keys[0], similarity, jnp.zeros((3, 1), bool),
                                          region_mask)
  assert (np.asarray(empty) == 0.0).all()


def test_gradients_of_every_loss_are_finite():
  rng = np.random.RandomState(6)
  sim = jnp.asarray(rng.uniform(-1, 1, (4, 4)), jnp.float32)
  grad_sim, grad_scale = jax.grad(
      lambda s, t: losses.contrastive_loss(s, t, num_groups=2)[0], argnums=(0, 1))(
          sim, jnp.float32(2.6))
  itm = jax.grad(lambda x: losses.matching_loss(x)[0])(jnp.asarray(rng.normal(size=(8, 2)),
                                                                    jnp.float32))
  labels = jnp.asarray(np.array([[1, -1, 3], [-1, -1, 0]], np.int32))
  mlm = jax.grad(lambda x: losses.masked_token_loss(x, labels)[0])(
      jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32))
  e0, e1 = _unit(1), _unit(0, 1)
  sequence, phrase_index, img_index = _wpg_sequence([e0, e1], [_unit(0.6, 0, 0.8),
                                                               _unit(0.8, 0.6)], (4, 2))
  wpg = jax.grad(lambda x: losses.phrase_grounding_loss(
      jax.random.PRNGKey(4), x, phrase_index, img_index)[0])(sequence)
  for grad in (grad_sim, grad_scale, itm, mlm, wpg):
    assert np.isfinite(np.asarray(grad)).all()
  # They are real gradients, not zeros.
  for grad in (grad_sim, grad_scale, itm, mlm, wpg):
    assert float(jnp.abs(grad).max()) > 0


# ------------------------------------------------------------------------------ normalisation

def test_local_groups_average_per_group_token_means_and_skip_empty_groups():
  """Issue 10 item 4: under `local` negatives MLM/MCR are means of per-group means."""
  rng = np.random.RandomState(5)
  logits = rng.normal(size=(6, 4, 7)).astype(np.float32)
  labels = np.full((6, 4), -1, np.int32)
  labels[0, :3] = [1, 2, 3]       # group 0 (rows 0-1): 4 targets
  labels[1, 0] = 4
  labels[2, 1] = 5                # group 1 (rows 2-3): 1 target
  # group 2 (rows 4-5): none, left out of the average
  nll = -_log_softmax(logits.astype(np.float64))
  per_target = {(b, t): nll[b, t, labels[b, t]] for b, t in zip(*np.nonzero(labels >= 0))}
  group0 = np.mean([v for (b, _), v in per_target.items() if b < 2])
  group1 = np.mean([v for (b, _), v in per_target.items() if 2 <= b < 4])
  local, metrics = losses.masked_token_loss(jnp.asarray(logits), jnp.asarray(labels), 3)
  np.testing.assert_allclose(local, (group0 + group1) / 2, rtol=1e-6)
  global_, _ = losses.masked_token_loss(jnp.asarray(logits), jnp.asarray(labels), 1)
  np.testing.assert_allclose(global_, np.mean(list(per_target.values())), rtol=1e-6)
  assert abs(float(local) - float(global_)) > 1e-3
  assert int(metrics['count']) == 5
  # The same value as one call per group averaged over the groups that have targets.
  per_group = [losses.masked_token_loss(jnp.asarray(logits[2 * g:2 * g + 2]),
                                        jnp.asarray(labels[2 * g:2 * g + 2]))[0] for g in (0, 1)]
  np.testing.assert_allclose(local, np.mean(per_group), rtol=1e-6)


def test_wpg_local_groups_average_per_group_means():
  """WPG with 2 groups of 2 samples: group 0 has two samples with phrases, group 1 one."""
  rng = np.random.RandomState(6)
  batch, text, regions, hidden = 4, 4, 3, 5
  phrases = rng.normal(size=(batch, hidden)).astype(np.float32)
  region_vectors = rng.normal(size=(batch, hidden)).astype(np.float32)
  sequence = np.zeros((batch, text + regions, hidden), np.float32)
  sequence[:, 1] = phrases
  sequence[:, text:] = region_vectors[:, None]  # all regions of an image equal: any pick is one
  phrase_index = np.array([[1, 2], [1, 2], [1, 2], [1, 1]], np.int32)  # sample 3: no phrase
  img_index = np.tile([[text, text + regions]], (batch, 1)).astype(np.int32)
  cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  other = [1, 0, 3, 2]  # the only other sample of each group of 2
  hinge = [max(0.0, cos(phrases[i], region_vectors[other[i]]) + 0.2
               - cos(phrases[i], region_vectors[i])) for i in range(3)]
  loss, metrics = losses.phrase_grounding_loss(
      jax.random.PRNGKey(0), jnp.asarray(sequence), jnp.asarray(phrase_index),
      jnp.asarray(img_index), num_groups=2)
  np.testing.assert_allclose(loss, (np.mean(hinge[:2]) + hinge[2]) / 2, rtol=1e-5, atol=1e-7)
  assert int(metrics['count']) == 3
  assert abs((np.mean(hinge[:2]) + hinge[2]) / 2 - np.mean(hinge)) > 1e-3  # the test can fail


def test_top_k_values_equal_lax_top_k_with_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 7))
  x = jnp.where(jax.random.uniform(jax.random.PRNGKey(1), x.shape) < 0.3, -jnp.inf, x)
  np.testing.assert_array_equal(losses._top_k_values(x, 3), jax.lax.top_k(x, 3)[0])
  weights = jnp.asarray([1.0, 2.0, 3.0])
  finite = lambda f: lambda y: jnp.where(jnp.isfinite(f(y)), f(y), 0.0) @ weights
  ours = jax.grad(lambda y: finite(lambda z: losses._top_k_values(z, 3))(y).sum())(x)
  ref = jax.grad(lambda y: finite(lambda z: jax.lax.top_k(z, 3)[0])(y).sum())(x)
  np.testing.assert_array_equal(ours, ref)
