"""Training augmentations: small dict -> dict functions, composed by name.

An example is a dict with "image" (encoded bytes, or a uint8/float32 HxWx3
tensor), "label", and "rng": a stateless seed of shape [2]. `compose` gives
op number i the seed fold_in(rng, i), so every random decision is a pure
function of (seed, global example index, op position). That is what makes
the pipeline reproducible under parallel map and resumable at any step.

Every op works eagerly on tensors and inside `tf.data` maps; when an image
is too small for a crop, the op raises DataError eagerly, and a tf assertion
inside tf.data that `pipeline` turns into DataError.

Pixel values stay on the 0..255 scale until `normalize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.errors import DataError

Example = dict[str, Any]
Op = Callable[[Example], Example]

# Marks a tf assertion message that the iterator re-raises as DataError.
DATA_ERROR_MARKER = "cnnjax.DataError:"
INTERPOLATION_METHODS = ("bilinear", "area", "nearest", "bicubic")
# `normalize` builds constants of the image's shape up to this many elements.
_FULL_SIZE_CONSTANT_MAX = 1 << 22


# ----------------------------------------------------------------------------
# Composition and shape helpers.


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


def image_hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  shape = tf.shape(image)
  return shape[-3], shape[-2]


def check_fits(image: tf.Tensor, height: int, width: int, what: str) -> tf.Tensor:
  """Ensures a height x width window fits in `image` (DataError otherwise).

  Static shapes are checked in Python (always the case eagerly); dynamic ones
  with a tf assertion whose message `pipeline` converts to DataError.
  """
  static_h, static_w = image.shape[-3], image.shape[-2]
  if static_h is not None and static_w is not None:
    if height > static_h or width > static_w:
      raise DataError(f"{what}: a {height}x{width} crop is bigger than the {static_h}x{static_w} "
                      "image; use a smaller crop/image_size or resize the image up first")
    return image
  h, w = image_hw(image)
  message = tf.strings.format(
      f"{DATA_ERROR_MARKER} {what}: a {height}x{width} crop is bigger than the image of size "
      "{}x{}; use a smaller crop/image_size or resize the image up first", (h, w))
  assertion = tf.debugging.Assert(tf.logical_and(h >= height, w >= width), [message])
  with tf.control_dependencies([assertion]):
    return tf.identity(image)


def _as_float(image: tf.Tensor) -> tf.Tensor:
  return image if image.dtype == tf.float32 else tf.cast(image, tf.float32)


def _resize(image: tf.Tensor, height, width, method: str = "bilinear",
            antialias: bool = True) -> tf.Tensor:
  """Resizes to (height, width) as float32 0..255 (antialiased when shrinking, by default)."""
  antialias = antialias and method in ("bilinear", "bicubic")
  resized = tf.image.resize(_as_float(image), tf.stack([height, width]), method=method,
                            antialias=antialias)
  if method == "bicubic":  # Cubic filters overshoot; keep the 0..255 range.
    resized = tf.clip_by_value(resized, 0.0, 255.0)
  return resized


def shorter_side_size(height, width, target) -> tuple[tf.Tensor, tf.Tensor]:
  """(h, w) after scaling so that the shorter side equals `target`, aspect kept."""
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  target_i = tf.cast(target, tf.int32)
  scale = tf.cast(target, tf.float32) / tf.minimum(height_f, width_f)
  new_h = tf.where(height <= width, target_i, tf.cast(tf.round(height_f * scale), tf.int32))
  new_w = tf.where(height <= width, tf.cast(tf.round(width_f * scale), tf.int32), target_i)
  return tf.maximum(new_h, target_i), tf.maximum(new_w, target_i)


def resize_shorter_side_image(image: tf.Tensor, target, method: str = "bilinear") -> tf.Tensor:
  static_h, static_w = image.shape[-3], image.shape[-2]
  if isinstance(target, int) and static_h is not None and static_w is not None:
    # Static sizes stay static (eager mode, fixed-size datasets).
    scale = target / min(static_h, static_w)
    new_h = target if static_h <= static_w else max(target, int(round(static_h * scale)))
    new_w = target if static_w < static_h else max(target, int(round(static_w * scale)))
    resized = _resize(image, new_h, new_w, method)
    resized.set_shape([new_h, new_w, 3])
    return resized
  h, w = image_hw(image)
  new_h, new_w = shorter_side_size(h, w, target)
  return _resize(image, new_h, new_w, method)


def center_crop_image(image: tf.Tensor, height: int, width: int, what: str = "center crop") -> tf.Tensor:
  image = check_fits(image, height, width, what)
  h, w = image_hw(image)
  top, left = (h - height) // 2, (w - width) // 2
  cropped = image[..., top:top + height, left:left + width, :]
  cropped.set_shape(image.shape[:-3].concatenate([height, width, 3]))
  return cropped


# ----------------------------------------------------------------------------
# Decoding.


def decode_image(image: tf.Tensor, size: int | None = None) -> tf.Tensor:
  """Encoded bytes (JPEG/PNG/GIF/BMP) or a HxWxC array -> uint8 HxWx3.

  Grey images are replicated to RGB; an alpha channel is dropped (image
  folders composite it properly when they are prepared). `size` declares the
  side of a dataset whose images are all size x size (keeps shapes static).
  """
  if image.dtype == tf.string:
    decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
    decoded.set_shape([size, size, 3])
    return decoded
  if image.dtype != tf.uint8:
    image = tf.cast(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), tf.uint8)
  channels = image.shape[-1]
  if channels == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif channels == 4:
    image = image[..., :3]
  elif channels is None:
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                    lambda: image[..., :3])
    image.set_shape([image.shape[0], image.shape[1], 3])
  return image


def decode(size: int | None = None) -> Op:
  """Decodes "image" to uint8 RGB (of static size x size when given)."""
  def op(example: Example) -> Example:
    return dict(example, image=decode_image(example["image"], size))
  return op


# ----------------------------------------------------------------------------
# Geometry.


def resize(size: int | tuple[int, int], method: str = "bilinear") -> Op:
  """Resizes to exactly size x size (or (height, width)); float32 output."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    resized = _resize(example["image"], height, width, method)
    resized.set_shape([height, width, 3])
    return dict(example, image=resized)
  return op


def resize_shorter_side(size: int) -> Op:
  """Scales the image so that its shorter side is `size` (aspect kept)."""
  def op(example: Example) -> Example:
    return dict(example, image=resize_shorter_side_image(example["image"], size))
  return op


def random_resize_shorter_side(min_size: int, max_size: int) -> Op:
  """Scale jittering (VGG, ResNet): shorter side -> S ~ U{min_size..max_size}."""
  if min_size > max_size:
    raise DataError(f"scale jittering needs scale_min <= scale_max, got [{min_size}, {max_size}]")
  if min_size <= 0:
    raise DataError(f"scale jittering needs a positive scale_min, got {min_size}")

  def op(example: Example) -> Example:
    size = tf.random.stateless_uniform([], example["rng"], minval=min_size, maxval=max_size + 1,
                                       dtype=tf.int32)
    return dict(example, image=resize_shorter_side_image(example["image"], size))
  return op


def center_crop(size: int | tuple[int, int]) -> Op:
  """The central size x size window."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    return dict(example, image=center_crop_image(example["image"], height, width))
  return op


def random_crop(size: int | tuple[int, int]) -> Op:
  """A uniformly placed size x size window."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    image = check_fits(example["image"], height, width, "random crop")
    cropped = tf.image.stateless_random_crop(image, [height, width, 3], seed=example["rng"])
    return dict(example, image=cropped)
  return op


def pad(pixels: int) -> Op:
  """Zero padding on every side (CIFAR: 4 pixels before a random 32x32 crop)."""
  def op(example: Example) -> Example:
    image = example["image"]
    return dict(example, image=tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]]))
  return op


def random_flip_left_right() -> Op:
  """Mirrors the image horizontally with probability 1/2."""
  def op(example: Example) -> Example:
    return dict(example, image=tf.image.stateless_random_flip_left_right(
        example["image"], seed=example["rng"]))
  return op


def _sample_inception_window(image_shape, rng, area_range, aspect_range, max_attempts):
  """(offset_y, offset_x, height, width) of a random crop with area/aspect in range.

  After `max_attempts` failed tries the whole image is used (TF's fallback).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=rng,
      min_object_covered=0.0, aspect_ratio_range=aspect_range, area_range=area_range,
      max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def inception_crop(area_range: tuple[float, float] = (0.08, 1.0),
                   aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                   max_attempts: int = 10) -> Op:
  """GoogLeNet's random crop: 8-100% of the area, aspect 3/4..4/3 (width/height).

  On encoded JPEG bytes the crop is decoded fused with
  `tf.image.decode_and_crop_jpeg` (only the window's blocks are decoded, the
  main saving of the ImageNet input pipeline); other encodings and decoded
  images are cropped after a full decode, with the same window.
  """
  _check_range("area_range", area_range, 0.0, 1.0)
  _check_range("aspect_range", aspect_range, 0.0, None)

  def crop_decoded(image, rng):
    image = decode_image(image)
    y, x, h, w = _sample_inception_window(tf.shape(image), rng, area_range, aspect_range,
                                          max_attempts)
    return image[y:y + h, x:x + w, :]

  def op(example: Example) -> Example:
    image, rng = example["image"], example["rng"]
    if image.dtype != tf.string:
      return dict(example, image=crop_decoded(image, rng))

    def fused():
      shape = tf.image.extract_jpeg_shape(image)
      y, x, h, w = _sample_inception_window(shape, rng, area_range, aspect_range, max_attempts)
      return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, h, w]), channels=3)

    cropped = tf.cond(tf.io.is_jpeg(image), fused, lambda: crop_decoded(image, rng))
    cropped.set_shape([None, None, 3])
    return dict(example, image=cropped)
  return op


def random_interpolation_resize(size: int,
                                methods: Sequence[str] = INTERPOLATION_METHODS) -> Op:
  """Resizes to size x size with a method drawn uniformly (GoogLeNet's photometric trick).

  Without antialiasing, as GoogLeNet's pipeline did: the method itself is the
  randomised quantity, and the plain kernels cost a third of the antialiased
  ones, which matters at ImageNet throughput.
  """
  methods = tuple(methods)

  def op(example: Example) -> Example:
    image = example["image"]
    choice = tf.random.stateless_uniform([], example["rng"], minval=0, maxval=len(methods),
                                         dtype=tf.int32)
    branches = [(lambda m=m: _resize(image, size, size, m, antialias=False)) for m in methods]
    resized = tf.switch_case(choice, branches)
    resized.set_shape([size, size, 3])
    return dict(example, image=resized)
  return op


def _check_range(name: str, value, low: float | None, high: float | None) -> None:
  if len(value) != 2 or value[0] > value[1] or (low is not None and value[0] <= low) or (
      high is not None and value[1] > high):
    bounds = f"({low}, {high}]" if high is not None else f"> {low}"
    raise DataError(f"{name} must be (min, max) with min <= max and values in {bounds}, got {value}")


# ----------------------------------------------------------------------------
# Colour.


# The Inception preset's photometric strengths (host op and train-step twin).
PHOTOMETRIC_DEFAULTS = {"brightness": 32.0, "contrast": 0.5, "saturation": 0.5, "hue": 0.2}


def color_distortion(brightness: float = PHOTOMETRIC_DEFAULTS["brightness"],
                     contrast: float = PHOTOMETRIC_DEFAULTS["contrast"],
                     saturation: float = PHOTOMETRIC_DEFAULTS["saturation"],
                     hue: float = PHOTOMETRIC_DEFAULTS["hue"]) -> Op:
  """Photometric distortions (brightness in 0..255 units; others as factors).

  brightness adds U[-b, b]; contrast and saturation scale by U[1-c, 1+c];
  hue shifts by U[-h, h] of a full turn. Applied in that fixed order on
  float images, result clipped to 0..255.
  """
  def op(example: Example) -> Example:
    seeds = tf.random.experimental.stateless_split(example["rng"], 4)
    image = _as_float(example["image"]) / 255.0
    if brightness:
      image = tf.image.stateless_random_brightness(image, brightness / 255.0, seeds[0])
    if contrast:
      image = tf.image.stateless_random_contrast(image, 1 - contrast, 1 + contrast, seeds[1])
    image = tf.clip_by_value(image, 0.0, 1.0)
    if saturation:
      image = tf.image.stateless_random_saturation(image, 1 - saturation, 1 + saturation, seeds[2])
    if hue:
      image = tf.image.stateless_random_hue(image, hue, seeds[3])
    return dict(example, image=tf.clip_by_value(image, 0.0, 1.0) * 255.0)
  return op


def pca_lighting(pca_std: Sequence[float], pca_eigvec, alpha_std: float = 0.1) -> Op:
  """AlexNet's colour augmentation: add sum_i alpha_i * s_i * p_i to every pixel.

  p_i are the eigenvectors (columns of `pca_eigvec`) of the training set's
  RGB covariance, s_i the standard deviation along each (sqrt eigenvalue, in
  0..255 units) and alpha_i ~ N(0, alpha_std^2), drawn once per image. The
  added colour then has covariance alpha_std^2 * Sigma: a 10% copy of the
  dataset's own colour variation.
  """
  std = tf.constant(np.asarray(pca_std, np.float32).reshape(3))
  eigvec = tf.constant(np.asarray(pca_eigvec, np.float32).reshape(3, 3))

  def op(example: Example) -> Example:
    alpha = tf.random.stateless_normal([3], example["rng"], stddev=alpha_std)
    noise = tf.linalg.matvec(eigvec, alpha * std)
    return dict(example, image=_as_float(example["image"]) + noise)
  return op


def normalize(mean, std=None) -> Op:
  """(image - mean) / std on the 0..255 scale; mean is [3] (per channel) or [R, R, 3].

  A per-pixel mean whose size differs from the image is resized to it
  (presets subtract it at their fixed-size stage, where no resize happens).
  """
  mean = np.asarray(mean, np.float32)
  std_t = None if std is None else tf.constant(np.asarray(std, np.float32))
  mean_t = tf.constant(mean)

  def op(example: Example) -> Example:
    image = _as_float(example["image"])
    shape = image.shape
    if (shape.is_fully_defined() and shape.num_elements() <= _FULL_SIZE_CONSTANT_MAX
        and (mean.ndim == 1 or tuple(shape[-3:]) == mean.shape)):
      # The same arithmetic as below with operands of the image's own shape:
      # TF's CPU kernels broadcast a [3] vector over HxWx3 slowly (0.4 ms
      # per op at 224x224, as long as resizing), same-shape operands take
      # the fast elementwise path (0.06 ms). Equal to the broadcast form up
      # to float rounding (x/s - m/s vs (x - m)/s).
      scale = 1.0 if std is None else 1.0 / np.asarray(std, np.float32)
      offset = np.broadcast_to(-mean * scale, shape.as_list())
      if std is not None:
        image = image * tf.constant(np.broadcast_to(scale, shape.as_list()))
      return dict(example, image=image + tf.constant(offset))
    centre = mean_t
    if mean.ndim == 3 and tuple(image.shape[-3:-1]) != mean.shape[:2]:
      h, w = image_hw(image)
      centre = tf.image.resize(mean_t, tf.stack([h, w]), method="bilinear", antialias=True)
    image = image - centre
    if std_t is not None:
      image = image / std_t
    return dict(example, image=image)
  return op


def to_uint8() -> Op:
  """Rounds to uint8 (0..255): a quarter of float32's bytes to batch and transfer."""
  def op(example: Example) -> Example:
    image = example["image"]
    if image.dtype != tf.uint8:
      image = tf.cast(tf.clip_by_value(tf.round(_as_float(image)), 0.0, 255.0), tf.uint8)
    return dict(example, image=image)
  return op


def to_float() -> Op:
  def op(example: Example) -> Example:
    return dict(example, image=_as_float(example["image"]))
  return op


# ----------------------------------------------------------------------------
# Presets.

PRESETS = ("none", "cifar", "alexnet", "scale_jitter", "inception")
_PRESET_KWARGS = {
    "none": {"resize_size"},
    "cifar": {"pad", "flip"},
    "alexnet": {"resize_size", "pca_color", "pca_alpha_std", "flip"},
    "scale_jitter": {"scale_min", "scale_max", "pca_color", "pca_alpha_std", "flip"},
    "inception": {"area_range", "aspect_range", "photometric", "brightness", "contrast",
                  "saturation", "hue", "interpolations", "pca_color", "pca_alpha_std", "flip"},
}


def train_ops(preset: str, *, image_size: int, native_size: int | None,
              normalize_op: Op, pca: tuple[np.ndarray, np.ndarray] | None = None,
              **kwargs) -> list[Op]:
  """The op list of a named training preset.

  Args:
    preset: one of PRESETS.
    image_size: side of the square network input.
    native_size: the dataset's fixed square image side, or None when sizes vary.
    normalize_op: the mean/std subtraction, placed by each preset where the
      papers put it (AlexNet: on the 256x256 image, before the 224 crop;
      CIFAR: before the zero padding, so that padding is the mean colour).
    pca: (pca_std, pca_eigvec) used when kwargs["pca_color"] is true.
    **kwargs: preset options (see _PRESET_KWARGS / README).
  """
  if preset not in PRESETS:
    from cnnjax.errors import close_matches
    raise DataError(f"unknown augmentation preset {preset!r}: {close_matches(preset, PRESETS)}")
  unknown = set(kwargs) - _PRESET_KWARGS[preset]
  if unknown:
    raise DataError(f"augmentation {preset!r} does not take {sorted(unknown)}; "
                    f"it takes {sorted(_PRESET_KWARGS[preset])}")
  default_resize = int(round(image_size / 0.875))
  flip = [random_flip_left_right()] if kwargs.get("flip", True) else []
  colour = []
  if kwargs.get("pca_color", False):
    if pca is None:
      raise DataError("pca_color needs PCA statistics (computed from the training split)")
    colour = [pca_lighting(*pca, alpha_std=kwargs.get("pca_alpha_std", 0.1))]

  if preset == "none":
    if native_size == image_size:
      return [decode(native_size), normalize_op]
    resize_size = kwargs.get("resize_size", default_resize)
    _check_crop(image_size, resize_size, "none: resize_size")
    return [decode(native_size), resize_shorter_side(resize_size), center_crop(image_size),
            normalize_op]

  if preset == "cifar":
    pixels = kwargs.get("pad", 4)
    ops = [decode(native_size)]
    if native_size != image_size:
      ops += [resize_shorter_side(image_size), center_crop(image_size)]
    return ops + [normalize_op, pad(pixels), random_crop(image_size)] + flip

  if preset == "alexnet":
    resize_size = kwargs.get("resize_size", default_resize)
    _check_crop(image_size, resize_size, "alexnet: resize_size")
    return ([decode(native_size), resize_shorter_side(resize_size), center_crop(resize_size)]
            + colour
            + [normalize_op, random_crop(image_size)] + flip)

  if preset == "scale_jitter":
    scale_min = kwargs.get("scale_min", int(round(image_size * 256 / 224)))
    scale_max = kwargs.get("scale_max", int(round(image_size * 512 / 224)))
    if scale_min > scale_max:
      raise DataError(f"scale jittering needs scale_min <= scale_max, got [{scale_min}, {scale_max}]")
    _check_crop(image_size, scale_min, "scale_jitter: scale_min")
    return ([decode(native_size), random_resize_shorter_side(scale_min, scale_max), random_crop(image_size)]
            + flip + colour + [normalize_op])

  # inception
  photometric = kwargs.get("photometric", True)
  if photometric not in (True, False, "device"):
    raise DataError(f"inception: photometric must be True (on the host), False or 'device' "
                    f"(in the train step), got {photometric!r}")
  geometry = [inception_crop(tuple(kwargs.get("area_range", (0.08, 1.0))),
                             tuple(kwargs.get("aspect_range", (3 / 4, 4 / 3)))),
              random_interpolation_resize(image_size, kwargs.get("interpolations",
                                                                 INTERPOLATION_METHODS))] + flip
  if photometric == "device":
    if colour:
      raise DataError("inception: pca_color runs on the host after the photometric distortions; "
                      "with photometric='device' turn pca_color off (or use photometric=True)")
    return geometry + [to_uint8()]
  distortions = []
  if photometric:
    distortions = [color_distortion(**{k: kwargs[k] for k in ("brightness", "contrast",
                                                               "saturation", "hue") if k in kwargs})]
  return geometry + distortions + colour + [normalize_op]


def _check_crop(crop: int, available: int, what: str) -> None:
  if crop > available:
    raise DataError(f"{what}={available} is smaller than the {crop}x{crop} crop; "
                    "the crop must fit inside the resized image")
