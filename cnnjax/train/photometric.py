"""The Inception preset's photometric distortions, run inside the train step.

With `augment_kwargs.photometric="device"` the host pipeline stops after the
crop, resize and flip and sends uint8 images (a quarter of the float32
bytes); the jitted train step then applies brightness, contrast, saturation
and hue per example, and the mean/std normalisation. On the host these cost
about as much as decoding (RESULTS.md, input section); on an accelerator they
are a few elementwise passes.

The operations are those of `cnnjax.data.augment.color_distortion`
(tf.image's brightness, contrast, saturation and hue, in that order, with
the same ranges), computed on the 0..255 scale; the random factors come from
JAX's generator instead of TensorFlow's, so the values differ from the host
path while the distribution is the same. Keys derive from the state's rng
and the step, so a resumed run draws exactly what an uninterrupted one does.

Needs only jax.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Folded into the state's rng (with the step) to give the distortions their
# own stream, independent of dropout's.
_STREAM = 0x50484F54  # "PHOT"


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """[..., 3] RGB (any non-negative scale) -> [..., 3] HSV, hue and saturation in [0, 1)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  spread = value - jnp.minimum(jnp.minimum(r, g), b)
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  safe = jnp.where(spread > 0, spread, 1.0)
  hue = jnp.where(r == value, (g - b) / safe,
                  jnp.where(g == value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)) / 6.0
  hue = jnp.where(spread > 0, hue, 0.0)
  hue = jnp.where(hue < 0, hue + 1.0, hue)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """Inverse of `rgb_to_hsv` (hue taken modulo 1)."""
  hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  sector = jnp.mod(hue, 1.0) * 6.0
  chroma = saturation * value

  def channel(n: float) -> jax.Array:  # n = 5, 3, 1 for red, green, blue
    k = jnp.mod(n + sector, 6.0)
    return value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
  """tf.image.adjust_contrast per image: (x - channel mean) * factor + channel mean."""
  mean = jnp.mean(images, axis=(-3, -2), keepdims=True)
  return (images - mean) * factor + mean


def adjust_saturation_and_hue(images: jax.Array, factor: jax.Array, delta: jax.Array) -> jax.Array:
  """tf.image.adjust_saturation(factor) then adjust_hue(delta), per image, in one HSV round trip.

  Converting back to HSV between the two would return the same hue and value
  and the adjusted saturation, so one round trip gives the same values.
  """
  hsv = rgb_to_hsv(images)
  saturation = jnp.clip(hsv[..., 1] * factor[..., None, None], 0.0, 1.0)
  hue = jnp.mod(hsv[..., 0] + delta[..., None, None], 1.0)
  return hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], axis=-1))


def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
  return adjust_saturation_and_hue(images, factor, jnp.zeros_like(factor))


def adjust_hue(images: jax.Array, delta: jax.Array) -> jax.Array:
  return adjust_saturation_and_hue(images, jnp.ones_like(delta), delta)


@dataclasses.dataclass(frozen=True)
class DevicePhotometric:
  """uint8 [B, H, W, 3] -> distorted, normalised float32 images, per example.

  brightness is in 0..255 units (U[-b, b] added); contrast and saturation
  scale by U[1-c, 1+c]; hue shifts by U[-h, h] of a turn; then
  (x - mean) / std with per-channel constants (std None: mean only).
  """

  brightness: float
  contrast: float
  saturation: float
  hue: float
  mean: tuple[float, float, float]
  std: tuple[float, float, float] | None

  def __call__(self, images: jax.Array, rng: jax.Array, step: jax.Array) -> jax.Array:
    key = jax.random.fold_in(jax.random.fold_in(rng, _STREAM), step)
    keys = jax.random.split(key, 4)
    batch = images.shape[0]
    shape = (batch, 1, 1, 1)
    x = images.astype(jnp.float32)
    if self.brightness:
      x = x + jax.random.uniform(keys[0], shape, minval=-self.brightness, maxval=self.brightness)
    if self.contrast:
      x = adjust_contrast(x, jax.random.uniform(keys[1], shape, minval=1 - self.contrast,
                                                maxval=1 + self.contrast))
    x = jnp.clip(x, 0.0, 255.0)
    if self.saturation or self.hue:
      factor, delta = jnp.ones((batch,)), jnp.zeros((batch,))
      if self.saturation:
        factor = jax.random.uniform(keys[2], (batch,), minval=1 - self.saturation,
                                    maxval=1 + self.saturation)
      if self.hue:
        delta = jax.random.uniform(keys[3], (batch,), minval=-self.hue, maxval=self.hue)
      x = jnp.clip(adjust_saturation_and_hue(x, factor, delta), 0.0, 255.0)
    x = x - jnp.asarray(self.mean, jnp.float32)
    if self.std is not None:
      x = x / jnp.asarray(self.std, jnp.float32)
    return x
