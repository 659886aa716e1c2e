"""Tensor-level image helpers shared by the augmentations, the views and the statistics.

Images are HxWx3 (or [..., H, W, 3]) tensors, uint8 or float32 on the
0..255 scale. A window that does not fit raises DataError eagerly, and a
tf assertion inside tf.data that `pipeline` turns into DataError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.errors import DataError, close_matches

Example = dict[str, Any]
Op = Callable[[Example], Example]

# Marks a tf assertion message that the iterator re-raises as DataError.
DATA_ERROR_MARKER = "cnnjax.DataError:"


def check_named_options(what: str, name: str, options: dict[str, set[str]], kwargs) -> None:
  """DataError for an unknown `name` (a key of `options`) or an option it does not take."""
  if name not in options:
    raise DataError(f"unknown {what} {name!r}: {close_matches(name, tuple(options))}")
  unknown = set(kwargs) - options[name]
  if unknown:
    raise DataError(f"{what} {name!r} does not take {sorted(unknown)}; "
                    f"it takes {sorted(options[name])}")


def check_crop_fits(crop: int, available: int, what: str) -> None:
  """DataError when a crop x crop window cannot fit in an image resized to `available`."""
  if crop > available:
    raise DataError(f"{what}={available} is smaller than the {crop}x{crop} crop; "
                    "the crop must fit inside the resized image")


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


def as_float(image: tf.Tensor) -> tf.Tensor:
  return image if image.dtype == tf.float32 else tf.cast(image, tf.float32)


# The training presets' rescaling (AlexNet's shorter side, VGG's scale
# jittering): an area average when the image shrinks, bilinear when it grows.
# Both are antialiased; TF's antialiased bilinear kernel costs 3.1 ms on a
# 500x375 -> 341x256 shrink against 1.1 ms for its area kernel (one core;
# RESULTS.md, "Input pipeline per preset"), and it was most of those presets' cost.
SHRINK_AREA = "area_when_shrinking"


def resize_image(image: tf.Tensor, height, width, method: str = "bilinear",
                 antialias: bool = True) -> tf.Tensor:
  """Resizes to (height, width) as float32 0..255 (antialiased when shrinking, by default).

  method SHRINK_AREA: "area" when neither side grows, plain bilinear when
  neither shrinks (TF's antialiased kernel computes the same there, slowly),
  else antialiased bilinear; the image itself (as float) when the size does
  not change.
  """
  if method == SHRINK_AREA:
    h, w = image_hw(image)
    target = tf.stack([height, width])
    same = tf.logical_and(tf.equal(h, height), tf.equal(w, width))
    shrinks = tf.logical_and(height <= h, width <= w)
    grows = tf.logical_and(height >= h, width >= w)  # antialiasing changes nothing there
    return tf.case([(same, lambda: as_float(image)),
                    (shrinks, lambda: tf.image.resize(as_float(image), target, method="area")),
                    (grows, lambda: tf.image.resize(as_float(image), target))],
                   default=lambda: tf.image.resize(as_float(image), target, antialias=True))
  antialias = antialias and method in ("bilinear", "bicubic")
  resized = tf.image.resize(as_float(image), tf.stack([height, width]), method=method,
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


def shorter_side_shape(shape: tuple[int, int], target: int) -> tuple[int, int]:
  """`shorter_side_size` of a static (height, width), as Python ints."""
  height, width = int(shape[0]), int(shape[1])
  scale = target / min(height, width)
  new_h = target if height <= width else max(target, int(round(height * scale)))
  new_w = target if width < height else max(target, int(round(width * scale)))
  return new_h, new_w


def resize_shorter_side_image(image: tf.Tensor, target, method: str = "bilinear") -> tf.Tensor:
  static_h, static_w = image.shape[-3], image.shape[-2]
  if isinstance(target, int) and static_h is not None and static_w is not None:
    # Static sizes stay static (eager mode, fixed-size datasets).
    new_h, new_w = shorter_side_shape((static_h, static_w), target)
    resized = resize_image(image, new_h, new_w, method)
    resized.set_shape([new_h, new_w, 3])
    return resized
  h, w = image_hw(image)
  new_h, new_w = shorter_side_size(h, w, target)
  return resize_image(image, new_h, new_w, method)


def center_offsets(image: tf.Tensor, height: int, width: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(top, left) of the central height x width window."""
  h, w = image_hw(image)
  return (h - height) // 2, (w - width) // 2


def center_crop_image(image: tf.Tensor, height: int, width: int, what: str = "center crop") -> tf.Tensor:
  image = check_fits(image, height, width, what)
  top, left = center_offsets(image, height, width)
  cropped = image[..., top:top + height, left:left + width, :]
  cropped.set_shape(image.shape[:-3].concatenate([height, width, 3]))
  return cropped


def square_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """Shorter side -> size, then the centre size x size square (float32)."""
  return center_crop_image(resize_shorter_side_image(image, size), size, size)


def round_to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds 0..255 values to uint8 (a quarter of float32's bytes to batch and transfer)."""
  if image.dtype == tf.uint8:
    return image
  return tf.cast(tf.clip_by_value(tf.round(as_float(image)), 0.0, 255.0), tf.uint8)


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
