"""Training augmentations: small dict -> dict functions, composed by name.

An example is a dict with "image" (encoded bytes, or a uint8/float32 HxWx3
tensor), "label", and "rng": a stateless seed of shape [2]. `compose` gives
op number i the seed fold_in(rng, i), so every random decision is a pure
function of (seed, global example index, op position). That is what makes
the pipeline reproducible under parallel map and resumable at any step.

Every op works eagerly on tensors and inside `tf.data` maps; when an image
is too small for a crop, the op raises DataError eagerly, and a tf assertion
inside tf.data that `pipeline` turns into DataError. The ops live in
`geometry` (decode, resize, crop, pad, flip) and `colour` (distortions, PCA
lighting, normalisation); this module composes them into the presets.

Pixel values stay on the 0..255 scale until `normalize`. At boundary
"uint8" the presets stop before the colour: the same op list with the
DEVICE ops held by placeholders (so every geometric draw is the one of the
host path), the window marked where the host would normalise, and the
result rounded to uint8 (`cnnjax.preprocessing.device` does the rest).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.colour import (PHOTOMETRIC_DEFAULTS, color_distortion, identity, normalize,
                                pca_lighting, to_float, to_uint8)
from cnnjax.data.geometry import (INTERPOLATION_METHODS, center_crop, decode, fit_to_canvas,
                                  inception_crop, mark_window, pad, random_crop,
                                  random_flip_left_right, random_interpolation_resize,
                                  random_resize_shorter_side, record_flip, resize,
                                  resize_shorter_side)
from cnnjax.data.image_ops import DATA_ERROR_MARKER, Example, Op, decode_image
from cnnjax.errors import DataError
from cnnjax.preprocessing import presets as presets_lib

__all__ = [  # the ops, importable from here as before the split
    "DATA_ERROR_MARKER", "INTERPOLATION_METHODS", "PHOTOMETRIC_DEFAULTS", "PRESETS", "Example", "Op",
    "center_crop", "color_distortion", "compose", "decode", "decode_image", "inception_crop",
    "normalize", "pad", "pca_lighting", "random_crop", "random_flip_left_right",
    "random_interpolation_resize", "random_resize_shorter_side", "resize", "resize_shorter_side",
    "to_float", "to_uint8", "train_ops",
]


def compose(ops: Sequence[Op]) -> Op:
  """Applies `ops` in order, handing op i its own seed fold_in(rng, i)."""
  ops = list(ops)

  def composed(example: Example) -> Example:
    base_rng = example.get("rng")
    for position, op in enumerate(ops):
      if base_rng is not None:
        example = dict(example, rng=tf.random.experimental.stateless_fold_in(base_rng, position))
      example = op(example)
    if base_rng is not None:
      example = dict(example, rng=base_rng)
    return example

  return composed


PRESETS = tuple(presets_lib.PRESETS)


def photometric_strengths(preset: str, options) -> dict[str, float] | None:
  """The Inception distortions' strengths the preset applies (from its resolved `options`),
  or None when it applies none."""
  if "photometric" not in presets_lib.PRESETS[preset].ops or not options["photometric"]:
    return None
  return {k: float(options[k]) for k in presets_lib.PHOTOMETRIC_STRENGTHS}


def check_canvas(preset: str, kwargs) -> None:
  """DataError unless `preset` can stop at boundary "canvas" (the step resizes its crop)."""
  if "random_resize" not in presets_lib.PRESETS[preset].ops:
    raise DataError(f"boundary 'canvas' leaves a crop's resize to the train step; preset "
                    f"{preset!r} has none to leave (use 'uint8')")
  if tuple(kwargs.get("interpolations", ("bilinear",))) != ("bilinear",):
    raise DataError(f"{preset}: boundary 'canvas' resizes bilinearly in the train step; the random "
                    "interpolation methods (interpolations=...) need boundary 'uint8' or 'float32'")


@dataclasses.dataclass(frozen=True)
class _Context:
  """What the tf.data op of a declared step needs to be built."""
  preset: str
  image_size: int
  native_size: int | None
  options: dict
  normalize_op: Op
  pca: tuple[np.ndarray, np.ndarray] | None
  device: bool  # stop at uint8: the DEVICE ops are the train step's
  canvas: bool  # stop before the resize: it, the flip and the colour are the train step's


def _flip(c: _Context) -> list[Op]:
  if not c.options["flip"]:
    return []
  return [record_flip() if c.canvas else random_flip_left_right()]


def _photometric(c: _Context) -> list[Op]:
  strengths = photometric_strengths(c.preset, c.options)
  if strengths is None or c.canvas:
    return []
  return [identity() if c.device else color_distortion(**strengths)]


def _pca_lighting(c: _Context) -> list[Op]:
  if not c.options["pca_color"] or c.canvas:
    return []
  if c.pca is None:
    raise DataError("pca_color needs PCA statistics (computed from the training split)")
  return [identity() if c.device else pca_lighting(*c.pca, alpha_std=c.options["pca_alpha_std"])]


# The tf.data op(s) of each declared op (cnnjax.preprocessing.presets.OPS). A DEVICE op on the
# uint8 path keeps its place as a placeholder, so every geometric draw (seeded by its op's
# position, `compose`) is the host path's.
TF_OPS: dict[str, Callable[[_Context], list[Op]]] = {
    "decode": lambda c: [decode(c.native_size)],
    "fit_input": lambda c: ([] if c.native_size == c.image_size else
                            [resize_shorter_side(c.image_size), center_crop(c.image_size)]),
    "center_view": lambda c: ([] if c.native_size == c.image_size else
                              [resize_shorter_side(c.options["resize_size"]),
                               center_crop(c.image_size)]),
    "resize_shorter_side": lambda c: [resize_shorter_side(c.options["resize_size"])],
    "center_crop": lambda c: [center_crop(c.options["resize_size"])],
    "random_resize_shorter_side": lambda c: [random_resize_shorter_side(
        c.options["scale_min"], c.options["scale_max"])],
    "pad": lambda c: [pad(c.options["pad"])],
    "random_crop": lambda c: [random_crop(c.image_size)],
    "inception_crop": lambda c: [inception_crop(tuple(c.options["area_range"]),
                                                tuple(c.options["aspect_range"]),
                                                c.options["max_attempts"])],
    "random_resize": lambda c: [fit_to_canvas(c.image_size) if c.canvas else
                                random_interpolation_resize(c.image_size,
                                                            c.options["interpolations"])],
    "flip": _flip,
    "photometric": _photometric,
    "pca_lighting": _pca_lighting,
    "normalize": lambda c: [] if c.canvas else [mark_window() if c.device else c.normalize_op],
}


def train_ops(preset: str, *, image_size: int, native_size: int | None,
              normalize_op: Op, pca: tuple[np.ndarray, np.ndarray] | None = None,
              boundary: str = "float32", **kwargs) -> list[Op]:
  """The tf.data op list of a training preset, built from its declaration
  (`cnnjax.preprocessing.presets`).

  Args:
    preset: one of PRESETS.
    image_size: side of the square network input.
    native_size: the dataset's fixed square image side, or None when sizes vary.
    normalize_op: the mean/std subtraction, run where the preset declares "normalize".
    pca: (pca_std, pca_eigvec) used when kwargs["pca_color"] is true.
    boundary: a resolved boundary (`cnnjax.preprocessing.boundary`):
      "float32" runs every op; "uint8" stops at uint8 with a window (see the
      module docstring); "canvas" stops at the crop (the train step resizes).
    **kwargs: preset options (`presets.OPTIONS`; DataError for one it refuses).
  """
  options = presets_lib.check_options(preset, kwargs, image_size, error=DataError)
  if boundary not in ("float32", "uint8", "canvas"):
    raise DataError(f"the tf.data pipeline stops at boundary 'float32', 'uint8' or 'canvas', "
                    f"got {boundary!r}")
  canvas = boundary == "canvas"
  if canvas:
    check_canvas(preset, kwargs)
  device = boundary != "float32"
  context = _Context(preset, image_size, native_size, options, normalize_op, pca, device, canvas)
  ops = [op for name in presets_lib.PRESETS[preset].ops for op in TF_OPS[name](context)]
  return ops + [to_uint8()] if device and not canvas else ops
