"""Device meshes and logical-axis rules.

Parameters and activations are annotated with logical axis names (`layers.py`); a config maps
them to the mesh axes `data`, `fsdp` and `tensor`. The rule sets below cover the usual layouts:
  replicated / data-parallel: batch over (data, fsdp), parameters replicated;
  fsdp: batch over (data, fsdp), the `embed` dimension of parameters sharded over `fsdp`;
  tensor: heads, mlp and vocab (the word table and decoder rows) over `tensor`.
The authors' 86,051-row table divides by no power of two and NamedSharding needs even splits,
so the base configs pad the vocabulary to a multiple of 128 rows (`ModelConfig.vocab_multiple`).
`param_shardings` replicates (with a warning) any parameter dimension that its mesh axes do not
divide, e.g. an unpadded vocabulary under the tensor rules.

`local` negatives cut the batch into G contiguous groups, one per data shard. The group
operations below (`group_similarity`, `take_within_groups`) reshape the batch axis to [G, B/G]
and index inside a group only, so the SPMD partitioner keeps them on the shard that holds the
group: no all-gather of activations, whatever the mesh.
"""

from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Activation rules shared by every layout: the batch is split over every data-like axis.
_ACTIVATION_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
)

RULES: Dict[str, Tuple[Tuple[str, object], ...]] = {
    'data_parallel': _ACTIVATION_RULES + (
        ('embed', None), ('mlp', None), ('heads', None), ('kv', None), ('vocab', None)),
    'fsdp': _ACTIVATION_RULES + (
        ('embed', 'fsdp'), ('mlp', None), ('heads', None), ('kv', None), ('vocab', None)),
    'tensor': _ACTIVATION_RULES + (
        ('embed', None), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv', None),
        ('vocab', 'tensor')),
    'fsdp_tensor': _ACTIVATION_RULES + (
        ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv', None),
        ('vocab', 'tensor')),
}


def logical_rules(name_or_rules) -> Tuple[Tuple[str, object], ...]:
  """A named rule set from RULES, or explicit ((logical, mesh axis or None), ...) pairs."""
  if isinstance(name_or_rules, str):
    if name_or_rules not in RULES:
      raise ValueError(f'Unknown sharding rules {name_or_rules!r}; choose from {sorted(RULES)}.')
    return RULES[name_or_rules]
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in name_or_rules)


def _resolve(shape: Sequence[int], num_devices: int, what: str):
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'{what} {shape} must have {len(MESH_AXES)} entries {MESH_AXES}.')
  if shape.count(-1) > 1:
    raise ValueError(f'At most one {what} axis may be -1, got {shape}.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f'{num_devices} devices do not divide into {what} {shape}.')
    shape[shape.index(-1)] = num_devices // known
  return shape


def create_mesh(shape: Sequence[int], devices=None,
                dcn_shape: Optional[Sequence[int]] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh laid out on the physical topology by `mesh_utils`.

  Args:
    shape: devices per axis; one entry may be -1 to take all remaining devices. With `dcn_shape`
      this is the mesh inside one slice (ICI).
    devices: the devices to use (default all); a mesh smaller than the device list uses its
      first devices and logs a warning.
    dcn_shape: multi-slice: slices per axis (e.g. (2, 1, 1) for data parallelism over 2 slices);
      the mesh is then `create_hybrid_device_mesh(shape, dcn_shape)` and axis i has
      shape[i] * dcn_shape[i] devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if dcn_shape is not None:
    # Granules are TPU slices; devices without `slice_index` (GPU, CPU) use one per process.
    by_process = not hasattr(devices[0], 'slice_index')
    granules = len({d.process_index if by_process else d.slice_index for d in devices})
    dcn_shape = _resolve(dcn_shape, granules, 'DCN mesh')
    if int(np.prod(dcn_shape)) != granules:
      raise ValueError(f'DCN mesh {dcn_shape} needs {int(np.prod(dcn_shape))} slices '
                       f'({"processes" if by_process else "slices"}), the devices form '
                       f'{granules}.')
    shape = _resolve(shape, len(devices) // granules, 'mesh')
    mesh_devices = mesh_utils.create_hybrid_device_mesh(
        shape, dcn_shape, devices, process_is_granule=by_process,
        allow_split_physical_axes=True)
    return Mesh(mesh_devices, MESH_AXES)
  shape = _resolve(shape, len(devices), 'mesh')
  needed = int(np.prod(shape))
  if needed > len(devices):
    raise ValueError(f'Mesh {shape} needs {needed} devices, have {len(devices)}.')
  if needed < len(devices):
    logging.warning('Mesh %s uses %d of the %d devices.', shape, needed, len(devices))
    devices = devices[:needed]
  # allow_split_physical_axes: a TPU mesh axis may then span part of a physical axis instead of
  # failing for shapes that do not factor along the torus.
  mesh_devices = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(mesh_devices, MESH_AXES)


def divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh,
                   name: str = 'array') -> PartitionSpec:
  """`spec` with every dimension its mesh axes do not divide replicated (logged as a warning)."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for dim, (size, axes) in enumerate(zip(shape, entries)):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    devices = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    if size % devices:
      logging.warning('%s: dimension %d (%d) is not divisible by mesh axes %s (%d devices); '
                      'replicated instead.', name, dim, size, names, devices)
      axes = None
    fitted.append(axes)
  return PartitionSpec(*fitted)


def param_shardings(boxed_params, mesh: Mesh, rules) -> object:
  """NamedShardings of a (possibly abstract) boxed parameter tree under `rules`.

  Like `nn.logical_to_mesh_sharding`, but a dimension that its mesh axes do not divide is
  replicated with a warning instead of failing at jit time.
  """
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_params), rules)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  # Shapes read off the boxes (unboxing under a mesh would add sharding constraints).
  leaves = jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=is_box)[0]
  flat_specs, treedef = jax.tree_util.tree_flatten(
      specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  if len(leaves) != len(flat_specs):
    raise ValueError(f'{len(leaves)} parameters but {len(flat_specs)} partition specs.')
  out = []
  for (path, leaf), spec in zip(leaves, flat_specs):
    shape = np.shape(leaf.unbox(apply_constraint=False) if is_box(leaf) else leaf)
    fitted = divisible_spec(spec, shape, mesh, jax.tree_util.keystr(path))
    out.append(NamedSharding(mesh, fitted))
  return jax.tree_util.tree_unflatten(treedef, out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over every data-like axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


def num_data_shards(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def _grouped(x: jax.Array, num_groups: int) -> jax.Array:
  if x.shape[0] % num_groups:
    raise ValueError(f'Batch {x.shape[0]} is not divisible into {num_groups} groups.')
  return x.reshape((num_groups, x.shape[0] // num_groups) + x.shape[1:])


def take_within_groups(x: jax.Array, index: jax.Array, num_groups: int) -> jax.Array:
  """`x[index]` for an index that stays inside each row's group, computed group-locally.

  Args:
    x: [B, ...] batch-major array (sharded or not).
    index: [B] int global row indices; row k of group g must pick a row of group g
      (`negatives.mine_hard_negatives`, `negatives.random_other_index` give such indices).
    num_groups: G contiguous groups of the batch.

  Returns:
    [B, ...] = x[index]. An index outside its group is taken modulo the group size.
  """
  if num_groups == 1:
    return jnp.take(x, index, axis=0)
  groups = _grouped(x, num_groups)  # [G, b, ...]
  block = groups.shape[1]
  local = (index.reshape(num_groups, block) % block).astype(jnp.int32)
  local = local.reshape(local.shape + (1,) * (x.ndim - 1))
  taken = jnp.take_along_axis(groups, local, axis=1, mode='clip')
  return taken.reshape(x.shape)


def group_similarity(text: jax.Array, visual: jax.Array, num_groups: int) -> jax.Array:
  """The G diagonal blocks of text @ visual.T, computed per group: [G, B/G, B/G].

  Equals `negatives.group_blocks(text @ visual.T, G)` without the off-diagonal blocks (and so
  without gathering the other shards' embeddings).
  """
  return jnp.einsum('gih,gjh->gij', _grouped(text, num_groups), _grouped(visual, num_groups))
