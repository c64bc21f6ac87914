"""Hard-negative mining for image-text matching (spec §2.5), with `local` or `global` scope.

`local` negatives reproduce the authors' data parallelism, where every GPU mined negatives in its
own slice of the batch: the batch is cut into `num_groups` equal contiguous groups (one per data
shard: the batch axis is sharded contiguously, so a group lives on one device) and every choice
stays inside its group. `global` is `num_groups=1`: the whole global batch. Because the grouping is
expressed on the arrays themselves, the result does not depend on the mesh and runs unchanged on
one device, which is what makes sharded and unsharded runs bit-comparable.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array


def group_blocks(matrix: Array, num_groups: int) -> Array:
  """The diagonal blocks of a [B, B] matrix: [num_groups, B/G, B/G]."""
  size = matrix.shape[0]
  if size % num_groups:
    raise ValueError(f'Batch {size} is not divisible into {num_groups} negative groups.')
  block = size // num_groups
  blocks = matrix.reshape(num_groups, block, num_groups, block)
  index = jnp.arange(num_groups)
  return blocks[index, :, index, :]


def mine_hard_negatives(rng: Array, sim_mat: Array, num_groups: int = 1,
                        true_matches: Optional[Array] = None,
                        temperature: Optional[float] = None) -> Tuple[Array, Array]:
  """Pairs every sample with its hardest in-group negative, half text-side, half image-side.

  Within each group of b samples: S = sim − 2·I; the hardest image of text i is argmax_j S[i, j]
  and the hardest text of image j is argmax_i S[i, j]. A random permutation decides which b//2
  samples keep their text (paired with their hardest image) and which keep their image (paired
  with their hardest text). No gradient flows through the choice.

  Args:
    rng: PRNG key for the permutation.
    sim_mat: [B, B] text-image similarities (rows texts, columns images).
    num_groups: number of contiguous groups mining independently (1 = global batch).
    true_matches: optional [B, B] bool, caption i is true of image j. True matches are not
      negatives: they are chosen only when a sample has no false pair in its group (then the most
      similar true match, the old behaviour), never the sample itself. None = the reference rule.
    temperature: None picks the hardest negative (the reference); a float T samples it from
      softmax(S / T) over the same scores instead (softer negatives for small T^-1; true
      matches and the sample itself stay all but excluded for T <= 0.5).

  Returns:
    (hard_txt_index [B], hard_img_index [B]) int32: row k of the negatives pairs text
    hard_txt_index[k] with image hard_img_index[k]; rows are group-major, and inside a group the
    text-side pairs come first, as in the reference code.
  """
  sim = jax.lax.stop_gradient(sim_mat)
  blocks = group_blocks(sim, num_groups)  # [G, b, b]
  block = blocks.shape[1]
  if block < 2:
    raise ValueError(f'Each negative group needs at least 2 samples, got {block}.')
  eye = jnp.eye(block, dtype=blocks.dtype)
  if true_matches is None:
    blocks = blocks - 2.0 * eye
  else:  # cosines lie in [-1, 1]: false pairs > true matches (-4) > the sample itself (-8)
    true_blocks = group_blocks(true_matches, num_groups).astype(blocks.dtype)
    blocks = blocks - 4.0 * jnp.maximum(true_blocks, eye) - 4.0 * eye
  if temperature is None:
    hardest_image = jnp.argmax(blocks, axis=2)  # [G, b] for each text
    hardest_text = jnp.argmax(blocks, axis=1)  # [G, b] for each image
  else:
    image_rng, text_rng = jax.random.split(jax.random.fold_in(rng, 1))
    hardest_image = jax.random.categorical(image_rng, blocks / temperature, axis=2)
    hardest_text = jax.random.categorical(text_rng, blocks / temperature, axis=1)
  perm = jnp.argsort(jax.random.uniform(rng, (num_groups, block)), axis=1)
  half = block // 2
  text_side, image_side = perm[:, :half], perm[:, half:]
  txt = jnp.concatenate([text_side, jnp.take_along_axis(hardest_text, image_side, 1)], axis=1)
  img = jnp.concatenate([jnp.take_along_axis(hardest_image, text_side, 1), image_side], axis=1)
  offset = (jnp.arange(num_groups) * block)[:, None]
  return ((txt + offset).reshape(-1).astype(jnp.int32),
          (img + offset).reshape(-1).astype(jnp.int32))


def random_other_index(rng: Array, batch_size: int, num_groups: int = 1) -> Array:
  """For each sample, a uniformly drawn different sample of its group: [B] int32."""
  if batch_size % num_groups:
    raise ValueError(f'Batch {batch_size} is not divisible into {num_groups} groups.')
  block = batch_size // num_groups
  if block < 2:
    raise ValueError(f'Each group needs at least 2 samples, got {block}.')
  position = jnp.arange(batch_size) % block
  shift = jax.random.randint(rng, (batch_size,), 1, block)  # never 0, so never itself
  group_start = jnp.arange(batch_size) - position
  return (group_start + (position + shift) % block).astype(jnp.int32)
