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
import glob
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnjax.errors import ConfigError

DATA_AXIS = "data"


# Read by jax.distributed.initialize itself too: "0,1,2,3" restricts this process to those devices.
LOCAL_DEVICE_IDS_ENV = "JAX_LOCAL_DEVICE_IDS"
# How launchers that start several processes per node say how many run on this node.
_TASKS_ON_NODE_ENV = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
                      "SLURM_TASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE")
_LOCAL_RANK_ENV = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")
_VISIBLE_DEVICES_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


def _launcher(environ: Mapping[str, str]) -> str | None:
  """The launcher JAX would auto-detect and restrict to one device per process, if any."""
  if "SLURM_JOB_ID" in environ and "SLURM_LOCALID" in environ:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in environ or "OMPI_COMM_WORLD_LOCAL_RANK" in environ:
    return "ompi"
  return None


def _tasks_on_this_node(environ: Mapping[str, str]) -> int | None:
  """Processes the launcher runs on this node (SLURM writes e.g. "4(x2)" or "2,1")."""
  for name in _TASKS_ON_NODE_ENV:
    value = environ.get(name)
    if value:
      first = value.split(",")[0].split("(")[0]
      if first.isdigit():
        return int(first)
  return None


def visible_gpu_count(environ: Mapping[str, str] | None = None) -> int | None:
  """GPUs this process may use, without starting a JAX backend (None: unknown)."""
  environ = os.environ if environ is None else environ
  for name in _VISIBLE_DEVICES_ENV:
    value = environ.get(name)
    if value is not None:
      return len([d for d in value.split(",") if d.strip()])
  count = len(glob.glob("/dev/nvidia[0-9]*"))
  return count or None


def _parse_ids(text: str) -> list[int]:
  try:
    return [int(part) for part in text.replace(" ", "").split(",") if part]
  except ValueError:
    raise ConfigError(f"local device ids {text!r}: give comma-separated integers such as "
                      "'0,1,2,3', 'all' or 'auto'") from None


def local_device_ids_for(local_device_ids: str | Sequence[int] | None = None,
                         environ: Mapping[str, str] | None = None) -> list[int] | None:
  """The devices this process should use; None lets JAX choose (every visible one, on TPU too).

  Args:
    local_device_ids: a list, or "0,1", "all" (every visible GPU of this
      node) or "auto"/None: $JAX_LOCAL_DEVICE_IDS if set, else, under SLURM
      or Open MPI, every visible GPU when the launcher runs one process on
      this node and the process's local rank when it runs one per GPU.
  """
  environ = os.environ if environ is None else environ
  if local_device_ids is not None and not isinstance(local_device_ids, str):
    return [int(i) for i in local_device_ids]
  choice = (local_device_ids or "auto").strip().lower()
  if choice == "auto" and environ.get(LOCAL_DEVICE_IDS_ENV):
    choice = environ[LOCAL_DEVICE_IDS_ENV].strip().lower()
  if choice not in ("auto", "all"):
    return _parse_ids(choice)
  visible = visible_gpu_count(environ)
  if choice == "all":
    return list(range(visible)) if visible else None
  if _launcher(environ) is None:
    return None  # JAX leaves the devices alone outside SLURM and Open MPI (TPU, explicit flags)
  tasks = _tasks_on_this_node(environ)
  if tasks is not None and tasks > 1 and visible != 1:
    # One process per GPU, each seeing them all: the local rank picks its own.
    rank = next((environ[name] for name in _LOCAL_RANK_ENV if name in environ), None)
    return [int(rank)] if rank is not None and rank.isdigit() else None
  # One process on this node (or the launcher bound one GPU to it): all of them. JAX's
  # auto-detection would otherwise keep only device [local rank] of a multi-GPU node.
  return list(range(visible)) if visible else None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: str | Sequence[int] | None = None) -> None:
  """Joins a multi-process run (GPU cluster, TPU slice); a no-op when already joined.

  With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI,
  Kubernetes); elsewhere pass all three, or set JAX_COORDINATOR_ADDRESS and
  pass num_processes and process_id. Devices: see `local_device_ids_for`
  (under SLURM and Open MPI a process uses all of its node's GPUs unless the
  launcher starts one process per GPU).
  """
  if jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids_for(local_device_ids))


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
