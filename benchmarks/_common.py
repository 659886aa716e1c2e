"""Pieces the train-step benchmark's parent process and its workers share.

Timing statistics, peak memory, machine load, the peak-FLOP/s table that
model FLOP utilisation (MFU) divides by, and the line protocol between the
parent and its worker processes. Imports neither jax nor torch, so each side
loads only its own framework.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

# Every protocol line starts with this, so stray prints from libraries on a
# worker's stdout never parse as a message.
PROTOCOL_PREFIX = "@@train_step_bench "

# Dense peak FLOP/s by accelerator and compute dtype, from the vendors' data
# sheets (dense, no sparsity). float32 on NVIDIA Ampere and later runs its
# convolutions and matmuls in TF32 under JAX's and PyTorch's default
# precision, so the float32 figure divides by the TF32 peak; the plain
# float32 (CUDA core) peak is given for reference.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "tf32": 495e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12},
}


def lookup_peak_flops(device_kind: str, dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, where it came from) for a device kind string such as
  "NVIDIA H100 80GB HBM3"; (None, reason) when the table has no entry."""
  kind = device_kind.upper()
  if "H200" in kind:
    entry = "H200"
  elif "H100" in kind:
    entry = "H100 PCIe" if "PCIE" in kind else "H100 SXM"
  elif "A100" in kind:
    entry = "A100"
  else:
    return None, f"no peak FLOP/s entry for device {device_kind!r}; pass --peak_flops"
  key = "tf32" if dtype == "float32" else dtype
  if key not in PEAK_FLOPS[entry]:
    return None, f"no {dtype} peak for {entry}; pass --peak_flops"
  return PEAK_FLOPS[entry][key], f"table: {entry} dense {key}"


def mfu(macs_per_image: int | None, images_per_second: float | None,
        peak_flops: float | None) -> float | None:
  """Model FLOP utilisation of a training step.

  A train step costs about three forward passes (forward, gradient with
  respect to activations, gradient with respect to weights), and each
  multiply-add is two FLOPs: 3 x 2 x MACs x images/s / peak.
  """
  if not macs_per_image or not images_per_second or not peak_flops:
    return None
  return 3 * 2 * macs_per_image * images_per_second / peak_flops


def step_statistics(step_seconds: Sequence[float], batch_size: int) -> dict[str, Any]:
  """Median, min and max step time, and the images/s of the median step."""
  if not step_seconds:
    return {"steps_timed": 0, "step_s_median": None, "step_s_min": None,
            "step_s_max": None, "images_per_s": None}
  median = statistics.median(step_seconds)
  return {
      "steps_timed": len(step_seconds),
      "step_s_median": median,
      "step_s_min": min(step_seconds),
      "step_s_max": max(step_seconds),
      "images_per_s": batch_size / median,
  }


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
  """Resident set size now (None where /proc is missing and psutil too)."""
  try:
    with open("/proc/self/statm", encoding="ascii") as statm:
      return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    try:
      import psutil  # pylint: disable=import-outside-toplevel
      return int(psutil.Process().memory_info().rss)
    except ImportError:
      return None


def load_average() -> list[float]:
  """1, 5 and 15 minute load averages: the machine is shared, so every record says how busy."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def cpu_count() -> int:
  """Cores this process may run on (the affinity mask, not the host's total)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def send(message: dict[str, Any], stream=None) -> None:
  """Writes one protocol message (a JSON object on one line)."""
  stream = stream or sys.stdout
  stream.write(PROTOCOL_PREFIX + json.dumps(message) + "\n")
  stream.flush()


def parse(line: str) -> dict[str, Any] | None:
  """The message on a protocol line, or None for any other line."""
  if not line.startswith(PROTOCOL_PREFIX):
    return None
  return json.loads(line[len(PROTOCOL_PREFIX):])
