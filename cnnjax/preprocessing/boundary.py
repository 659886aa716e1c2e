"""Where the host stops and the device takes over, and what a batch carries across.

One setting, `boundary`, says where the host's work ends (FFCV's `ToDevice()`
in the middle of one op list); the preset declarations
(`cnnjax.preprocessing.presets`) say which ops may run after it:

  "float32"  the host finishes every op and ships float32 images: the same
             numbers on every backend (the exact path)
  "uint8"    the host runs the geometry and ships uint8 images with their
             windows; the jitted step runs the ops declared device_from
             "uint8" (colour distortions, PCA lighting, normalisation): a
             quarter of the bytes
  "canvas"   the Inception preset only: the host decodes the crop and ships
             it unresized on a uint8 canvas with its "crop"; the step also
             runs the ops declared device_from "canvas" (the resize and the
             mirror): fewer host cycles per image
  "dali"     training only: NVIDIA DALI decodes and crops on the GPU
             (`cnnjax.dali`) and ships uint8 with windows, as "uint8"
  "auto"     "uint8" with an accelerator; on a CPU-only JAX the faster of
             float32 and uint8 there (CPU_BOUNDARY, measured: RESULTS.md,
             "uint8 to the device")

Evaluation batches stop at "uint8" for every boundary but "float32" (there
is no canvas or DALI evaluation). `max_resolution` (a bounded copy of the
data) is a separate choice of what is read, not of where it is finished.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np

BOUNDARIES = ("auto", "float32", "uint8", "canvas", "dali")
# "auto" on a CPU-only JAX (see RESULTS.md, "uint8 to the device").
CPU_BOUNDARY = "float32"


class HostBatch(TypedDict, total=False):
  """A batch as it crosses from the host to the device (per process: b = local batch).

  image   float32 [b, S, S, 3] finished ("float32"); uint8 [b, S, S, 3]
          otherwise ("canvas": the crop at the canvas's top-left).
          Evaluation views: [b, V, S, S, 3] for V views; dense evaluation
          adds "image_q<Q>" keys ([b, 2, Q, Q, 3], with "window_q<Q>").
  label   int32 [b]
  window  int32 [b, 4] (or [b, V, 4]): (frame, top, left, flipped), where
          the crop lies in the square the host would have normalised
          ("uint8", "dali", uint8 evaluation; see `device.DeviceInput`)
  crop    int32 [b, 3]: (height, width, flipped) of the crop on the canvas
          ("canvas")
  mask    bool [b]: real examples (evaluation; padding is False)
  """
  image: np.ndarray
  label: np.ndarray
  window: np.ndarray
  crop: np.ndarray
  mask: np.ndarray


def check_boundary(boundary: str, error=ValueError) -> str:
  """`boundary` if it is one of BOUNDARIES, else `error` naming the choices."""
  if not isinstance(boundary, str) or boundary not in BOUNDARIES:
    raise error(f"boundary must be one of {', '.join(map(repr, BOUNDARIES))} (where the host "
                f"stops: cnnjax.preprocessing.boundary), got {boundary!r}")
  return boundary


def resolve_boundary(boundary: str = "auto", backend: str | None = None, error=ValueError) -> str:
  """The boundary "auto" stands for on JAX's `backend` (default: its default backend)."""
  check_boundary(boundary, error)
  if boundary != "auto":
    return boundary
  if backend is None:
    import jax  # pylint: disable=import-outside-toplevel  (the declarations need no JAX)
    backend = jax.default_backend()
  return "uint8" if backend != "cpu" else CPU_BOUNDARY


def device_finishes(boundary: str) -> bool:
  """Whether batches cross as uint8 for the step to finish (every resolved boundary but float32)."""
  return boundary != "float32"


def eval_boundary(boundary: str) -> str:
  """Evaluation's boundary for a resolved training one: uint8 unless float32."""
  return "float32" if boundary == "float32" else "uint8"
