"""Device mesh and how arrays are laid out on it.

The mesh has two axes, 'data' and 'fsdp'. The batch is split over both.
Parameters and optimizer state are replicated, except that with fsdp > 1 every
array of at least `fsdp_min_size` elements is split over 'fsdp' along its
largest dimension that divides evenly (ZeRO-3 style: XLA gathers a layer's
weights when it needs them). Even on one device the step runs on this mesh, so
more devices or hosts change the mesh shape, never the code.
"""

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from medclip_jax.errors import UserError


MESH_AXES = ('data', 'fsdp')


def create_mesh(mesh_config) -> Mesh:
  """The ('data', 'fsdp') mesh of `config.mesh`; one size may be -1 (all remaining)."""
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise UserError(f'config.mesh has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}.')
  names = MESH_AXES
  sizes = [int(mesh_config.get(n, 1)) for n in names]
  n_devices = jax.device_count()
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise UserError(
      f'config.mesh {dict(mesh_config)}: each axis size is a number of devices (at least '
      '1), or -1 for all that remain, which at most one axis may be.'
    )
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if n_devices % known:  # the sizes are checked above: known is at least 1
      fixed = {n: s for n, s in zip(names, sizes) if s != -1}
      raise UserError(
        f'config.mesh {dict(mesh_config)}: the fixed axes {fixed} take {known} devices, '
        f'which does not divide the {n_devices} visible ({jax.devices()[0].platform}), so '
        'the -1 axis has no size. Set them to a divisor of the device count.'
      )
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise UserError(
      f'config.mesh {dict(mesh_config)} needs {math.prod(sizes)} devices but '
      f'{n_devices} are visible ({jax.devices()[0].platform}). Set the axis '
      'sizes so their product is the device count, or use -1 for one axis.'
    )
  # Auto axes: XLA propagates shardings from the inputs and the few
  # constraints we set, rather than every op declaring its output layout.
  return jax.make_mesh(tuple(sizes), names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _leaf_spec(shape, fsdp: int, min_size: int) -> P:
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      return P(*[None] * dim, 'fsdp')
  return P()


def state_shardings(abstract_state, mesh: Mesh, fsdp_min_size: int):
  """Sharding of every leaf of a (shape-only) train state, by the rule above."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(
    lambda x: NamedSharding(mesh, _leaf_spec(x.shape, fsdp, fsdp_min_size)), abstract_state
  )


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global_batch(local_batch, mesh: Mesh):
  """Assembles each process's rows into arrays sharded over the whole mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def from_host_copy(tree, mesh: Mesh):
  """Shards arrays that every process holds in full (e.g. prompts)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]), tree
  )


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str) -> int:
  """Returns the per-process batch size, or explains why it does not divide."""
  if global_batch_size < 1:
    raise UserError(
      f'{what} = {global_batch_size}: give a positive number of examples per step, a '
      f'multiple of the number of devices ({mesh.size}).'
    )
  if global_batch_size % mesh.size:
    fit = max(mesh.size, global_batch_size // mesh.size * mesh.size)
    raise UserError(
      f'{what} = {global_batch_size} must be a multiple of the number of '
      f'devices ({mesh.size}), since each device takes an equal slice: set it to {fit} '
      f'or another multiple of {mesh.size}.'
    )
  return global_batch_size // jax.process_count()
