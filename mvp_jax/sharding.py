"""Device meshes and logical-axis rules.

Parameters and activations are annotated with logical axis names (`layers.py`); a config maps
them to the mesh axes `data`, `fsdp` and `tensor`. The rule sets below cover the usual layouts:
  replicated / data-parallel: batch over (data, fsdp), parameters replicated;
  fsdp: batch over (data, fsdp), the `embed` dimension of parameters sharded over `fsdp`;
  tensor: heads and mlp over `tensor`.
Vocabulary rows stay unsharded: the authors' 86,051-row table divides by no power of two, and
NamedSharding needs even splits.
"""

from typing import Dict, Sequence, Tuple

import flax.linen as nn
from absl import logging
import jax
import numpy as np
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
        ('embed', None), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv', None), ('vocab', None)),
    'fsdp_tensor': _ACTIVATION_RULES + (
        ('embed', 'fsdp'), ('mlp', 'tensor'), ('heads', 'tensor'), ('kv', None),
        ('vocab', None)),
}


def logical_rules(name_or_rules) -> Tuple[Tuple[str, object], ...]:
  """A named rule set from RULES, or explicit ((logical, mesh axis or None), ...) pairs."""
  if isinstance(name_or_rules, str):
    if name_or_rules not in RULES:
      raise ValueError(f'Unknown sharding rules {name_or_rules!r}; choose from {sorted(RULES)}.')
    return RULES[name_or_rules]
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in name_or_rules)


def create_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 to take all remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f'Mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}.')
  if shape.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {shape}.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {shape}.')
    shape[shape.index(-1)] = len(devices) // known
  needed = int(np.prod(shape))
  if needed > len(devices):
    raise ValueError(f'Mesh {shape} needs {needed} devices, have {len(devices)}.')
  if needed < len(devices):
    logging.warning('Mesh %s uses %d of the %d devices.', shape, needed, len(devices))
    devices = devices[:needed]
  mesh_devices = np.asarray(devices).reshape(shape)
  return Mesh(mesh_devices, MESH_AXES)


def logical_to_sharding(logical_tree, mesh: Mesh, rules) -> object:
  """A pytree of logical PartitionSpecs -> a pytree of NamedShardings on `mesh`."""
  specs = nn.logical_to_mesh(logical_tree, rules)
  return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), specs,
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over every data-like axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


def num_data_shards(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']
