"""Evaluation views: the deterministic crops the papers average their softmax over.

Output formats (per example; batches add a leading batch axis):

  "center"     image [H, W, 3]: shorter side -> image_size / crop_fraction
               (0.875: 224 -> 256), centre image_size crop. For datasets whose
               images already are image_size x image_size (CIFAR, digits) the
               identity.
  "10crop"     image [10, H, W, 3] (AlexNet, ResNet): shorter side -> resize_size
               (256), centre resize_size square, then the crops in this order:
               0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre,
               5..9 the same five mirrored left-right.
  "multiscale" one key per scale Q, "image_q{Q}": [2, Q, Q, 3] (VGG dense
               evaluation): shorter side -> Q, centre Q x Q square, and its
               mirror image. The model runs fully convolutionally on each key
               and averages the class-score maps; keys are listed in
               `multiscale_keys(scales)`.
  "144crop"    image [144, 224, 224, 3] (GoogLeNet): for each scale Q in
               (256, 288, 320, 352): shorter side -> Q; three Q x Q squares
               (left/centre/right, or top/centre/bottom for portrait images);
               from each, the four corner and the centre image_size crops and the
               square resized to image_size; each also mirrored. View index
               v = ((scale * 3 + square) * 6 + crop) * 2 + mirrored.

All views normalise on the 0..255 scale like training (a per-pixel mean is
subtracted at the resize_size square stage for "center" and "10crop").
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.augment import (Example, Op, _resize, center_crop_image, check_fits, decode_image,
                                 image_hw, resize_shorter_side_image)
from cnnjax.errors import DataError, close_matches

VIEWS = ("center", "10crop", "multiscale", "144crop")
DEFAULT_MULTISCALE = (256, 384, 512)
GOOGLENET_SCALES = (256, 288, 320, 352)
_VIEW_KWARGS = {
    "center": {"crop_fraction", "resize_size"},
    "10crop": {"resize_size"},
    "multiscale": {"scales"},
    "144crop": {"scales"},
}


def multiscale_keys(scales: Sequence[int] = DEFAULT_MULTISCALE) -> list[str]:
  return [f"image_q{q}" for q in scales]


def five_crops(image: tf.Tensor, size: int) -> list[tf.Tensor]:
  """Top-left, top-right, bottom-left, bottom-right and centre size x size crops."""
  image = check_fits(image, size, size, "multi-crop view")
  h, w = image_hw(image)
  crops = [image[..., :size, :size, :], image[..., :size, w - size:, :],
           image[..., h - size:, :size, :], image[..., h - size:, w - size:, :],
           center_crop_image(image, size, size)]
  for crop in crops:
    crop.set_shape(image.shape[:-3].concatenate([size, size, 3]))
  return crops


def with_mirrors(crops: list[tf.Tensor]) -> list[tf.Tensor]:
  return crops + [tf.image.flip_left_right(c) for c in crops]


def eval_op(view: str, *, image_size: int, native_size: int | None, normalize_op: Op,
            **kwargs) -> Op:
  """The op turning a decoded-or-encoded example into `view`'s deterministic crops."""
  if view not in VIEWS:
    raise DataError(f"unknown evaluation view {view!r}: {close_matches(view, VIEWS)}")
  unknown = set(kwargs) - _VIEW_KWARGS[view]
  if unknown:
    raise DataError(f"view {view!r} does not take {sorted(unknown)}; "
                    f"it takes {sorted(_VIEW_KWARGS[view])}")

  def normalized(image):
    return normalize_op({"image": image})["image"]

  if view == "center":
    if native_size == image_size and "resize_size" not in kwargs and "crop_fraction" not in kwargs:
      return lambda ex: dict(ex, image=normalized(decode_image(ex["image"], native_size)))
    resize_size = kwargs.get("resize_size",
                             int(round(image_size / kwargs.get("crop_fraction", 0.875))))
    _check_size(image_size, resize_size, "center: resize_size")

    def center(ex: Example) -> Example:
      square = _square(decode_image(ex["image"], native_size), resize_size)
      return dict(ex, image=center_crop_image(normalized(square), image_size, image_size))
    return center

  if view == "10crop":
    resize_size = kwargs.get("resize_size", int(round(image_size / 0.875)))
    _check_size(image_size, resize_size, "10crop: resize_size")

    def ten_crop(ex: Example) -> Example:
      square = normalized(_square(decode_image(ex["image"], native_size), resize_size))
      return dict(ex, image=tf.stack(with_mirrors(five_crops(square, image_size))))
    return ten_crop

  if view == "multiscale":
    scales = tuple(int(q) for q in kwargs.get("scales", DEFAULT_MULTISCALE))
    if not scales:
      raise DataError("multiscale view needs at least one scale")

    def multiscale(ex: Example) -> Example:
      image = decode_image(ex["image"], native_size)
      out = {k: v for k, v in ex.items() if k != "image"}
      for q, key in zip(scales, multiscale_keys(scales)):
        square = normalized(_square(image, q))
        out[key] = tf.stack([square, tf.image.flip_left_right(square)])
      return out
    return multiscale

  # 144crop
  scales = tuple(int(q) for q in kwargs.get("scales", GOOGLENET_SCALES))
  for q in scales:
    _check_size(image_size, q, "144crop: scale")

  def multi_crop(ex: Example) -> Example:
    image = decode_image(ex["image"], native_size)
    per_scale = []
    for q in scales:
      squares = tf.cast(tf.stack(_three_squares(resize_shorter_side_image(image, q), q)),
                        tf.float32)                                    # [3, Q, Q, 3]
      crops = five_crops(squares, image_size) + [_resize(squares, image_size, image_size)]
      crops = tf.stack(crops, axis=1)                                  # [3, 6, S, S, 3]
      mirrored = tf.stack([crops, tf.reverse(crops, axis=[-2])], axis=2)  # [3, 6, 2, S, S, 3]
      per_scale.append(tf.reshape(mirrored, [-1, image_size, image_size, 3]))
    stacked = tf.concat(per_scale, axis=0)
    stacked.set_shape([len(scales) * 36, image_size, image_size, 3])
    return dict(ex, image=normalized(stacked))
  return multi_crop


def _square(image: tf.Tensor, size: int) -> tf.Tensor:
  """Shorter side -> size, then the centre size x size square (float32)."""
  resized = resize_shorter_side_image(image, size)
  return center_crop_image(resized, size, size)


def _three_squares(image: tf.Tensor, size: int) -> list[tf.Tensor]:
  """Left/centre/right squares of a landscape image (top/centre/bottom if portrait)."""
  h, w = image_hw(image)
  along = tf.maximum(h, w) - size
  squares = []
  for offset in (tf.zeros_like(along), along // 2, along):
    top = tf.where(h > w, offset, 0)
    left = tf.where(h > w, 0, offset)
    square = image[top:top + size, left:left + size]
    square.set_shape([size, size, 3])
    squares.append(square)
  return squares


def _check_size(crop: int, available: int, what: str) -> None:
  if crop > available:
    raise DataError(f"{what}={available} is smaller than the {crop}x{crop} crop; "
                    "the crop must fit inside the resized image")
