"""Geometric augmentations: decode, resize, crop, pad, flip (dict -> dict ops).

Each op reads its randomness from example["rng"] (see `augment.compose`).

Windows. When the device normalises (boundary "uint8"), the presets
put `mark_window()` where the host would normalise; it records
example["window"] = (frame, top, left, flipped) for an image of frame x
frame pixels, and the ops that can follow it, `pad`, `random_crop` and
`random_flip_left_right` (last), keep the record pointing at where the
output's pixels were in that frame (`cnnjax.preprocessing.device`). Without a
"window" key they do nothing of the sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.image_ops import (SHRINK_AREA, Example, Op, center_crop_image, check_fits, decode_image,
                                   image_hw, resize_image, resize_shorter_side_image,
                                   round_to_uint8)
from cnnjax.preprocessing import presets

INTERPOLATION_METHODS = presets.INTERPOLATION_METHODS


def decode(size: int | None = None) -> Op:
  """Decodes "image" to uint8 RGB (of static size x size when given)."""
  def op(example: Example) -> Example:
    return dict(example, image=decode_image(example["image"], size))
  return op


def mark_window() -> Op:
  """Starts the window record: the image itself is the frame (see the module docstring)."""
  def op(example: Example) -> Example:
    height, _ = image_hw(example["image"])
    return dict(example, window=tf.stack([height, 0, 0, 0]))
  return op


def _moved_window(example: Example, dy, dx) -> Example:
  """The example with its window's origin moved by (dy, dx) frame pixels, if it has one."""
  if "window" not in example:
    return example
  return dict(example, window=example["window"] + tf.stack([0, dy, dx, 0]))


def resize(size: int | tuple[int, int], method: str = "bilinear") -> Op:
  """Resizes to exactly size x size (or (height, width)); float32 output."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    resized = resize_image(example["image"], height, width, method)
    resized.set_shape([height, width, 3])
    return dict(example, image=resized)
  return op


def resize_shorter_side(size: int) -> Op:
  """Scales the image so that its shorter side is `size` (aspect kept; area when shrinking)."""
  def op(example: Example) -> Example:
    return dict(example, image=resize_shorter_side_image(example["image"], size, SHRINK_AREA))
  return op


def random_resize_shorter_side(min_size: int, max_size: int) -> Op:
  """Scale jittering (VGG, ResNet): shorter side -> S ~ U{min_size..max_size}."""
  def op(example: Example) -> Example:
    size = tf.random.stateless_uniform([], example["rng"], minval=min_size, maxval=max_size + 1,
                                       dtype=tf.int32)
    return dict(example, image=resize_shorter_side_image(example["image"], size, SHRINK_AREA))
  return op


def center_crop(size: int | tuple[int, int]) -> Op:
  """The central size x size window."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    return dict(example, image=center_crop_image(example["image"], height, width))
  return op


def random_crop(size: int | tuple[int, int]) -> Op:
  """A uniformly placed size x size window (tf.image.stateless_random_crop's draw)."""
  height, width = (size, size) if isinstance(size, int) else size

  def op(example: Example) -> Example:
    image = check_fits(example["image"], height, width, "random crop")
    shape = tf.shape(image)
    limit = shape - tf.constant([height, width, 3]) + 1
    offset = tf.random.stateless_uniform([3], example["rng"], maxval=tf.int32.max,
                                         dtype=tf.int32) % limit
    cropped = tf.slice(image, offset, [height, width, 3])
    return _moved_window(dict(example, image=cropped), offset[0], offset[1])
  return op


def pad(pixels: int) -> Op:
  """Zero padding on every side (CIFAR: 4 pixels before a random 32x32 crop)."""
  def op(example: Example) -> Example:
    image = example["image"]
    padded = tf.pad(image, [[pixels, pixels], [pixels, pixels], [0, 0]])
    return _moved_window(dict(example, image=padded), -pixels, -pixels)
  return op


def random_flip_left_right() -> Op:
  """Mirrors the image horizontally with probability 1/2 (tf.image's stateless draw)."""
  def op(example: Example) -> Example:
    flip = tf.random.stateless_uniform([], example["rng"], minval=0, maxval=1.0) < 0.5
    image = example["image"]
    out = dict(example, image=tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image))
    out["image"].set_shape(image.shape)
    if "window" in example:
      out["window"] = tf.tensor_scatter_nd_update(example["window"], [[3]],
                                                  [tf.cast(flip, tf.int32)])
    return out
  return op


def fit_to_canvas(size: int) -> Op:
  """Boundary "canvas": the crop, to go out on a size x size uint8 canvas.

  A crop no larger than size x size (most crops of a bounded copy) is left
  as it is; the pipeline's batching zero-pads it to the canvas (its
  top-left corner), and the train step resizes it
  (`cnnjax.preprocessing.device.resize_crop`): the host does no resampling.
  A larger crop is resized here (bilinear, the step's arithmetic) and fills
  the canvas, which the step then takes as it is. Records
  example["crop"] = (height, width, flipped=0) of the canvas's valid region.
  """
  def op(example: Example) -> Example:
    image = example["image"]
    height, width = image_hw(image)
    fits = tf.logical_and(height <= size, width <= size)
    placed = tf.cond(
        fits, lambda: image,
        lambda: round_to_uint8(resize_image(image, size, size, "bilinear", antialias=False)))
    placed.set_shape([None, None, 3])
    crop = tf.where(fits, tf.stack([height, width, 0]), tf.constant([size, size, 0]))
    return dict(example, image=placed, crop=crop)
  return op


def record_flip() -> Op:
  """random_flip_left_right's draw, recorded in example["crop"][2] for the step to apply."""
  def op(example: Example) -> Example:
    flip = tf.random.stateless_uniform([], example["rng"], minval=0, maxval=1.0) < 0.5
    crop = tf.tensor_scatter_nd_update(example["crop"], [[2]], [tf.cast(flip, tf.int32)])
    return dict(example, crop=crop)
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
    branches = [(lambda m=m: resize_image(image, size, size, m, antialias=False)) for m in methods]
    resized = tf.switch_case(choice, branches)
    resized.set_shape([size, size, 3])
    return dict(example, image=resized)
  return op

