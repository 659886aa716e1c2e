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

Pixel values stay on the 0..255 scale until `normalize`. With
`device=True` the presets stop before the colour: the same op list with
the colour ops held by placeholders (so every geometric draw is the one of
the host path), the window marked where the host would normalise, and the
result rounded to uint8 (`cnnjax.preprocessing.device` does the rest).
"""

from __future__ import annotations

from collections.abc import Sequence

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
from cnnjax.data.image_ops import (DATA_ERROR_MARKER, Example, Op, check_crop_fits, check_named_options,
                                   decode_image)
from cnnjax.errors import DataError

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


PRESETS = ("none", "cifar", "alexnet", "scale_jitter", "inception")
PRESET_KWARGS = {
    "none": {"resize_size"},
    "cifar": {"pad", "flip"},
    "alexnet": {"resize_size", "pca_color", "pca_alpha_std", "flip"},
    "scale_jitter": {"scale_min", "scale_max", "pca_color", "pca_alpha_std", "flip"},
    "inception": {"area_range", "aspect_range", "photometric", "brightness", "contrast",
                  "saturation", "hue", "interpolations", "pca_color", "pca_alpha_std", "flip",
                  "resize"},
}
PHOTOMETRIC_CHOICES = (True, False, "device")
RESIZE_CHOICES = ("host", "device")


def check_preset(preset: str, kwargs) -> None:
  """DataError for an unknown preset, an option it does not take or a bad photometric."""
  check_named_options("augmentation preset", preset, PRESET_KWARGS, kwargs)
  if kwargs.get("photometric", True) not in PHOTOMETRIC_CHOICES:
    raise DataError(f"inception: photometric must be True, False or 'device' (True, always in "
                    f"the train step), got {kwargs['photometric']!r}")
  if kwargs.get("resize", "host") not in RESIZE_CHOICES:
    raise DataError(f"inception: resize must be 'host' or 'device' (crops no larger than the "
                    f"input are resized in the train step), got {kwargs['resize']!r}")
  if kwargs.get("resize") == "device" and tuple(kwargs.get("interpolations", ("bilinear",))) != (
      "bilinear",):
    raise DataError("inception: resize='device' resizes bilinearly in the train step; the random "
                    "interpolation methods (interpolations=...) need resize='host'")


def photometric_strengths(preset: str, kwargs) -> dict[str, float] | None:
  """The Inception distortions' strengths the preset applies, or None when it applies none."""
  if preset != "inception" or kwargs.get("photometric", True) is False:
    return None
  return {k: float(kwargs.get(k, v)) for k, v in PHOTOMETRIC_DEFAULTS.items()}


def device_resizes(preset: str, kwargs) -> bool:
  """Whether the preset leaves the resize (and the flip) to the train step."""
  return preset == "inception" and kwargs.get("resize", "host") == "device"


def train_ops(preset: str, *, image_size: int, native_size: int | None,
              normalize_op: Op, pca: tuple[np.ndarray, np.ndarray] | None = None,
              device: bool = False, **kwargs) -> list[Op]:
  """The op list of a named training preset.

  Args:
    preset: one of PRESETS.
    image_size: side of the square network input.
    native_size: the dataset's fixed square image side, or None when sizes vary.
    normalize_op: the mean/std subtraction, placed by each preset where the
      papers put it (AlexNet: on the 256x256 image, before the 224 crop;
      CIFAR: before the zero padding, so that padding is the mean colour).
    pca: (pca_std, pca_eigvec) used when kwargs["pca_color"] is true.
    device: stop at uint8 with a window (see the module docstring); the
      colour and the normalisation are then the train step's.
    **kwargs: preset options (see PRESET_KWARGS / README).
  """
  check_preset(preset, kwargs)
  if kwargs.get("photometric") == "device" and not device:
    raise DataError("inception: photometric='device' runs the distortions in the train step; "
                    "it needs device_preprocessing on (True or 'auto')")
  default_resize = int(round(image_size / 0.875))
  flip = [random_flip_left_right()] if kwargs.get("flip", True) else []
  colour = []
  if kwargs.get("pca_color", False):
    if pca is None:
      raise DataError("pca_color needs PCA statistics (computed from the training split)")
    colour = [identity() if device else
              pca_lighting(*pca, alpha_std=kwargs.get("pca_alpha_std", 0.1))]
  if device:
    normalize_op = mark_window()

  if preset == "none":
    if native_size == image_size:
      ops = [decode(native_size), normalize_op]
    else:
      resize_size = kwargs.get("resize_size", default_resize)
      check_crop_fits(image_size, resize_size, "none: resize_size")
      ops = [decode(native_size), resize_shorter_side(resize_size), center_crop(image_size),
             normalize_op]

  elif preset == "cifar":
    pixels = kwargs.get("pad", 4)
    ops = [decode(native_size)]
    if native_size != image_size:
      ops += [resize_shorter_side(image_size), center_crop(image_size)]
    ops += [normalize_op, pad(pixels), random_crop(image_size)] + flip

  elif preset == "alexnet":
    resize_size = kwargs.get("resize_size", default_resize)
    check_crop_fits(image_size, resize_size, "alexnet: resize_size")
    ops = ([decode(native_size), resize_shorter_side(resize_size), center_crop(resize_size)]
           + colour + [normalize_op, random_crop(image_size)] + flip)

  elif preset == "scale_jitter":
    scale_min = kwargs.get("scale_min", int(round(image_size * 256 / 224)))
    scale_max = kwargs.get("scale_max", int(round(image_size * 512 / 224)))
    if scale_min > scale_max:
      raise DataError(f"scale jittering needs scale_min <= scale_max, got [{scale_min}, {scale_max}]")
    check_crop_fits(image_size, scale_min, "scale_jitter: scale_min")
    ops = ([decode(native_size), random_resize_shorter_side(scale_min, scale_max),
            random_crop(image_size)] + flip + colour + [normalize_op])

  else:  # inception
    strengths = photometric_strengths(preset, kwargs)
    distortions = []
    if strengths is not None:
      distortions = [identity() if device else color_distortion(**strengths)]
    if device_resizes(preset, kwargs):
      if not device:
        raise DataError("inception: resize='device' leaves the resize to the train step; it "
                        "needs device_preprocessing on (True or 'auto' with an accelerator)")
      # The op positions (so the seeds) of the host path: the crop is the same
      # window, the flip the same draw; the step resizes and mirrors.
      return [inception_crop(tuple(kwargs.get("area_range", (0.08, 1.0))),
                             tuple(kwargs.get("aspect_range", (3 / 4, 4 / 3)))),
              fit_to_canvas(image_size)] + ([record_flip()] if kwargs.get("flip", True) else [])
    ops = ([inception_crop(tuple(kwargs.get("area_range", (0.08, 1.0))),
                           tuple(kwargs.get("aspect_range", (3 / 4, 4 / 3)))),
            random_interpolation_resize(image_size, kwargs.get("interpolations",
                                                               INTERPOLATION_METHODS))]
           + flip + distortions + colour + [normalize_op])
  return ops + [to_uint8()] if device else ops

