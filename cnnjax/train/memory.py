"""Memory checked before the first step: a run that cannot fit stops with a named fix.

The train step is compiled ahead of time (the executable the loop then
runs, so nothing is compiled twice) and XLA's own memory analysis of it,
per device, is compared with what the device has: the free accelerator
memory, or the host's available RAM on the CPU backend (where every local
device shares it). A step that would not fit raises a ConfigError with the
estimate and a batch size and an image size that would, instead of
swapping the machine into the ground or dying of an out-of-memory error
minutes into the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax

from cnnjax.errors import ConfigError

GIB = 1 << 30
HEADROOM = 0.9  # use at most this share of what is free: allocators fragment


def _gib(num_bytes: float) -> str:
  return f"{num_bytes / GIB:.2f} GiB"


def available_bytes(device: jax.Device) -> tuple[int | None, str]:
  """(bytes this process can still use on `device`'s memory, what that memory is)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.device_kind} memory"
  if device.platform == "cpu":
    import psutil  # pylint: disable=import-outside-toplevel
    return int(psutil.virtual_memory().available), "available host RAM"
  return None, "unknown"


def step_bytes(compiled) -> dict[str, int] | None:
  """XLA's memory analysis of a compiled step, per device (None if not offered)."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without the analysis)
    return None
  if stats is None:
    return None
  resident = (stats.argument_size_in_bytes + stats.output_size_in_bytes
              - stats.alias_size_in_bytes)
  return {"temporaries": int(stats.temp_size_in_bytes), "resident": int(resident),
          "total": int(stats.temp_size_in_bytes + resident)}


def check_fits(needed: Mapping[str, int], mesh, *, batch_size: int, image_size: int,
               model: str) -> None:
  """ConfigError when the step's memory exceeds what its devices have free (batch_size:
  the global batch; image_size: the run's input side; model: its name, for the message)."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  free, what = available_bytes(local[0])
  if free is None:
    return
  sharing = len(local) if local[0].platform == "cpu" else 1  # CPU devices share the host's RAM
  total = needed["total"] * sharing
  if total <= HEADROOM * free:
    return
  # Temporaries (activations) grow with the batch and the image area; the
  # state (parameters, optimiser, statistics) does not.
  room = HEADROOM * free / sharing - needed["resident"]
  share = room / max(needed["temporaries"], 1)
  batch, size = int(batch_size), int(image_size)
  devices = mesh.devices.size
  fitting_batch = max(devices, int(batch * share) // devices * devices) if share > 0 else 0
  fitting_size = int(size * math.sqrt(share)) if share > 0 else 0
  advice = (f"use config.run.batch_size={fitting_batch} (or config.input.image_size="
            f"{fitting_size})" if share > 0 else "the parameters and optimiser state alone do "
            "not fit: use a smaller model (model.kwargs width_multiplier) or more devices")
  raise ConfigError(
      f"the train step of {model} at batch {batch} and image size {size} needs "
      f"~{_gib(total)} ({_gib(needed['temporaries'] * sharing)} of activations and temporaries, "
      f"{_gib(needed['resident'] * sharing)} of state and batch), but the {what} has "
      f"{_gib(free)} free; {advice}")


def compile_checked(train_step, abstract_state, batch: Mapping[str, Any], mesh, *, model: str,
                    image_size: int):
  """The train step compiled for these shapes, after checking that it fits; the
  step itself when it cannot be compiled ahead of time (a wrapped function).
  batch: this process's first batch; model and image_size name the run in the error."""
  if not hasattr(train_step, "lower"):
    return train_step
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  batch_sharding = sharding.batch_sharded(mesh)
  abstract_batch = {
      key: jax.ShapeDtypeStruct((value.shape[0] * jax.process_count(),) + tuple(value.shape[1:]),
                                value.dtype, sharding=batch_sharding)
      for key, value in batch.items()}
  compiled = train_step.lower(abstract_state, abstract_batch).compile()
  needed = step_bytes(compiled)
  if needed is not None:
    global_batch = next(iter(abstract_batch.values())).shape[0]
    check_fits(needed, mesh, batch_size=global_batch, image_size=image_size, model=model)
  return compiled
