"""Colour augmentations and normalisation on the host (dict -> dict ops).

At boundary "uint8" these run in the jitted step instead
(`cnnjax.preprocessing.device`, tested against these ops); the host versions
serve CPU-only training when they are the faster choice there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.image_ops import Example, Op, as_float, image_hw, round_to_uint8
from cnnjax.preprocessing import presets

# The Inception preset's photometric strengths (host op and DeviceInput), as declared.
PHOTOMETRIC_DEFAULTS = {k: float(presets.OPTIONS[k].default) for k in presets.PHOTOMETRIC_STRENGTHS}
# `normalize` builds constants of the image's shape up to this many elements.
_FULL_SIZE_CONSTANT_MAX = 1 << 22


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
    image = as_float(example["image"]) / 255.0
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
  0..255 units) and alpha_i ~ N(0, alpha_std^2), drawn once per image:
  noise = eigvec @ (alpha * sqrt(eigval)).

  The reading of the paper's lambda_i: the eigenvalues of the RGB
  covariance, i.e. variances, so each enters through its square root (a
  standard deviation). Only this reading gives a shift independent of the
  pixel scale: the added colour has covariance alpha_std^2 * Sigma (0.01
  Sigma for the paper's 0.1), a copy of the dataset's own colour variation
  at a tenth of its standard deviation, on 0..255 or 0..1 pixels alike.
  Multiplying by the eigenvalue itself (as some replications do, on 0..1
  pixels) gives a shift that depends on the scale the images are stored
  in. Tested in tests/data/test_data_augment.py
  (the noise covariance is 0.01 x the data's colour covariance).
  """
  std = tf.constant(np.asarray(pca_std, np.float32).reshape(3))
  eigvec = tf.constant(np.asarray(pca_eigvec, np.float32).reshape(3, 3))

  def op(example: Example) -> Example:
    alpha = tf.random.stateless_normal([3], example["rng"], stddev=alpha_std)
    noise = tf.linalg.matvec(eigvec, alpha * std)
    return dict(example, image=as_float(example["image"]) + noise)
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
    image = as_float(example["image"])
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


def identity() -> Op:
  """Holds a colour op's place (and so every later op's seed) when the device runs it."""
  return lambda example: example


def to_uint8() -> Op:
  """Rounds to uint8 (0..255): a quarter of float32's bytes to batch and transfer."""
  def op(example: Example) -> Example:
    return dict(example, image=round_to_uint8(example["image"]))
  return op


def to_float() -> Op:
  def op(example: Example) -> Example:
    return dict(example, image=as_float(example["image"]))
  return op
