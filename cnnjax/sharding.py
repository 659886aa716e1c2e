"""Data parallelism by sharding: one mesh axis 'data' over every device of every process.

The global batch is one `jax.Array` whose first dimension is split over
'data'; each process contributes its own rows
(`jax.make_array_from_process_local_data`). Parameters, optimiser state and
BatchNorm statistics are replicated and created in place by a jitted init
with `out_shardings`, so no host copy of the model ever exists. jit compiles
one SPMD program for all devices; there is no pmap, no replicate/unreplicate.

Multi-host: call `initialize_distributed()` (or `jax.distributed.initialize()`)
in every process before any other JAX call; `jax.devices()` then lists the
devices of all processes and the same code runs unchanged.

Needs only jax and numpy.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run (GPU cluster, TPU slice); a no-op when already joined.

  With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI,
  Kubernetes); elsewhere pass all three, or set JAX_COORDINATOR_ADDRESS and
  pass num_processes and process_id.
  """
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def num_local_devices(mesh: Mesh) -> int:
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def global_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded on 'data'.

  Every process passes the same number of rows, its share of the global
  batch in process order (cnnjax.data.train_iterator yields exactly this).
  Arrays already placed with the batch sharding (device-resident data) pass
  through untouched. The copies to the devices are asynchronous.
  """
  sharding = batch_sharded(mesh)

  def place(value):
    if isinstance(value, jax.Array) and value.sharding == sharding:
      return value
    return jax.make_array_from_process_local_data(sharding, np.asarray(value))

  return {key: place(value) for key, value in local_batch.items()}


def prefetch_to_device(batches: Iterator[Mapping[str, Any]], mesh: Mesh,
                       depth: int = 2) -> Iterator[dict[str, jax.Array]]:
  """`batches` placed on the mesh `depth` batches ahead of the one yielded.

  While the step runs on batch t, the host-to-device copies of batches
  t+1..t+depth are already under way, so they overlap compute instead of
  preceding it (flax's `prefetch_to_device`, for global arrays).
  """
  if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
    raise ValueError(f"prefetch depth must be an integer >= 1, got {depth!r}")
  queue: collections.deque = collections.deque()
  for local in batches:
    queue.append(global_batch(local, mesh))
    if len(queue) > depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def create_replicated(init_fn: Callable[..., Any], mesh: Mesh, *args) -> Any:
  """Runs a pure init under jit with every output replicated on `mesh`, in place."""
  return jax.jit(init_fn, out_shardings=replicated(mesh))(*args)


def abstract_replicated(init_fn: Callable[..., Any], mesh: Mesh, *args) -> Any:
  """The shapes/dtypes of init_fn(*args) with replicated shardings (nothing computed)."""
  shapes = jax.eval_shape(init_fn, *args)
  sharding = replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
