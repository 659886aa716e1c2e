"""The accelerator's share of the input pipeline: uint8 batch -> network input.

The host (cnnjax.data) decodes, crops, flips and resizes, rounds to uint8 and
ships a quarter of float32's bytes; `DeviceInput`, inside the jitted train
and eval steps, does the rest:

  photometric distortions   brightness, contrast, saturation, hue (Inception
                            preset; tf.image's operations on the 0..255 scale)
  PCA colour lighting       AlexNet's alpha-weighted principal components
  normalisation             (x - mean) / std, mean per channel or AlexNet's
                            per-pixel mean image

Random factors come from JAX's generator, keyed by fold_in(state rng, stream)
and the step, so a resumed run draws exactly what an uninterrupted one does
(the host draws the same distributions from TensorFlow's generator).

Windows. The host normalises some presets before their last crop (AlexNet:
the 256x256 square, then a random 224 crop; CIFAR: before the zero padding,
so that the padding is the mean colour). The device sees only the crop, so
the batch carries `window` int32 [..., 4] = (frame, top, left, flipped): the
crop's pixel (0, 0) sits at (top, left) of the frame x frame square where the
host would have normalised, and the crop was then mirrored when flipped is
1. The device subtracts the mean at those frame positions (a per-pixel mean
is resized to the frame as the host resizes it) and zeroes pixels outside
the frame (CIFAR's padding). Without a window the frame is the image.

A float batch is taken as prepared on the host (boundary "float32") and
passed through unchanged, so one `DeviceInput` serves both paths.

Needs only jax (the accelerator hosts have no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.preprocessing import presets

# Folded into the state's rng (with the step): each colour operation draws
# from its own stream, independent of dropout's.
_PHOTOMETRIC_STREAM = 0x50484F54  # "PHOT"
_PCA_STREAM = 0x50434131  # "PCA1"
# Every op the device may run (declared with device_from), in the declarations' order: what a
# `DeviceInput` built without a preset's ops runs.
ALL_DEVICE_OPS = tuple(name for name, op in presets.OPS.items() if op.device_from is not None)


# ----------------------------------------------------------------------------
# tf.image's colour operations, per example, on the 0..255 scale.


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
class Photometric:
  """The Inception preset's distortions of float [B, H, W, 3] images (0..255).

  brightness adds U[-b, b] (0..255 units); contrast and saturation scale by
  U[1-c, 1+c]; hue shifts by U[-h, h] of a turn; in that order, clipped to
  0..255 after contrast and at the end, as `cnnjax.data` does on the host.
  """

  brightness: float
  contrast: float
  saturation: float
  hue: float

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    keys = jax.random.split(key, 4)
    batch = x.shape[0]
    shape = (batch, 1, 1, 1)
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
    return x


@dataclasses.dataclass(frozen=True)
class PcaLighting:
  """AlexNet's colour noise: add sum_i alpha_i * std_i * eigvec[:, i], alpha ~ N(0, alpha_std^2).

  One draw per image (no clipping, as on the host); `std` on the 0..255
  scale, `eigvec` the eigenvectors as columns (rows of the tuple: R, G, B).
  """

  std: tuple[float, float, float]
  eigvec: tuple[tuple[float, float, float], ...]
  alpha_std: float = 0.1

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    alpha = self.alpha_std * jax.random.normal(key, (x.shape[0], 3))
    noise = (alpha * jnp.asarray(self.std, jnp.float32)) @ jnp.asarray(self.eigvec, jnp.float32).T
    return x + noise[:, None, None, :]


# ----------------------------------------------------------------------------
# Normalisation.


def resize_like_tf(image: jax.Array, size: int) -> jax.Array:
  """tf.image.resize(image, [size, size], "bilinear", antialias=True) of [H, W, C]."""
  scale = jnp.asarray([size / image.shape[0], size / image.shape[1]], jnp.float32)
  return jax.image.scale_and_translate(image, (size, size, image.shape[2]), (0, 1), scale,
                                       jnp.zeros(2, jnp.float32), "linear", antialias=True)


def _bilinear_axis(out_size: int, length: jax.Array):
  """TF's half-pixel-centre bilinear sampling along one axis: (lower, upper, lerp)."""
  scale = length.astype(jnp.float32) / out_size
  position = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  floor = jnp.floor(position)
  lower = jnp.clip(floor.astype(jnp.int32), 0, length - 1)
  upper = jnp.minimum(jnp.ceil(position).astype(jnp.int32), length - 1)
  return lower, upper, (position - floor)[:, None]


def resize_crop(canvas: jax.Array, crop: jax.Array, size: int) -> jax.Array:
  """The crop at the top-left of one uint8 canvas [C, C, 3], resized to float32
  [size, size, 3] and mirrored when crop[2] is 1.

  crop = (height, width, flipped). The same arithmetic as the host's
  `tf.image.resize(crop, [size, size], "bilinear")` (half-pixel centres, no
  antialiasing: the Inception preset's bilinear draw) followed by its flip.
  """
  y_low, y_high, y_lerp = _bilinear_axis(size, crop[0])
  x_low, x_high, x_lerp = _bilinear_axis(size, crop[1])
  image = canvas.astype(jnp.float32)
  top, bottom = image[y_low], image[y_high]
  top = top[:, x_low] + (top[:, x_high] - top[:, x_low]) * x_lerp[:, 0, None]
  bottom = bottom[:, x_low] + (bottom[:, x_high] - bottom[:, x_low]) * x_lerp[:, 0, None]
  out = top + (bottom - top) * y_lerp[:, None]
  return jnp.where(crop[2] > 0, out[:, ::-1], out)


def resize_crops(canvases: jax.Array, crops: jax.Array, size: int) -> jax.Array:
  """`resize_crop` of each example of a batch: [B, C, C, 3], [B, 3] -> [B, size, size, 3]."""
  return jax.vmap(functools.partial(resize_crop, size=size))(canvases, crops.astype(jnp.int32))


def _window_mean(mean_image: jax.Array, window: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The per-pixel mean the host subtracted from the pixels of one window (unflipped).

  The host resizes the [R, R, 3] mean to the frame (bilinear, antialiased,
  the identity when frame == R) and crops at (top, left): the same
  scale-and-translate, evaluated on the window's pixels only.
  """
  frame = jnp.maximum(window[0], 1).astype(jnp.float32)
  scale = jnp.stack([frame / mean_image.shape[0], frame / mean_image.shape[1]])
  translation = -window[1:3].astype(jnp.float32)
  return jax.image.scale_and_translate(mean_image, size + (3,), (0, 1), scale, translation,
                                       "linear", antialias=True)


def _window_means(mean_image: jax.Array, window: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[N, H, W, 3] `_window_mean` of each window.

  When every frame is the mean's own size (AlexNet: 256 x 256 squares and
  statistics; padding rows have frame 0) the windows are plain crops of it:
  slices instead of the per-window resampling contractions. The mean is
  padded by a window's size first, so that a window reaching out of the
  frame (CIFAR's padding) is sliced where it lies, not clamped inside.
  """
  side = mean_image.shape[0]
  frame = window[:, 0]

  def crops():
    padded = jnp.pad(mean_image, ((size[0], size[0]), (size[1], size[1]), (0, 0)))
    return jax.vmap(lambda w: jax.lax.dynamic_slice(
        padded, (w[1] + size[0], w[2] + size[1], 0), size + (3,)))(window)

  def resampled():
    return jax.vmap(functools.partial(_window_mean, mean_image, size=size))(window)

  if mean_image.shape[0] != mean_image.shape[1]:
    return resampled()
  return jax.lax.cond(jnp.all((frame == side) | (frame <= 0)), crops, resampled)


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceInput:
  """uint8 images -> float32 network input, inside the jitted step.

  Fields:
    mean: [3] per-channel mean or [R, R, 3] per-pixel mean image (0..255).
    std: [3] per-channel standard deviation, or None (mean subtraction only).
    photometric: the Inception distortions (training only), or None.
    pca: AlexNet's PCA lighting (training only), or None.
    resize: the network input side when training batches are canvases with
      a "crop" (boundary "canvas"), else None.
    ops: the declared ops `train` runs, in order (`DEVICE_OPS`): the preset's
      ops that run on the device at its boundary (`cnnjax.data.device_input`);
      None: ALL_DEVICE_OPS. An op whose part is None does nothing.

  A static field of the train state: equality and hash go by value (the
  mean image by a digest of its bytes, computed once).
  """

  mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.float32))
  std: np.ndarray | None = None
  photometric: Photometric | None = None
  pca: PcaLighting | None = None
  resize: int | None = None
  ops: tuple[str, ...] | None = None

  def __post_init__(self):
    mean = np.array(self.mean, np.float32)
    std = None if self.std is None else np.array(self.std, np.float32).reshape(3)
    if mean.shape != (3,) and (mean.ndim != 3 or mean.shape[-1] != 3):
      raise ValueError(f"mean must be [3] or [R, R, 3], got shape {mean.shape}")
    mean.setflags(write=False)
    if std is not None:
      std.setflags(write=False)
    object.__setattr__(self, "mean", mean)
    object.__setattr__(self, "std", std)
    ops = ALL_DEVICE_OPS if self.ops is None else tuple(self.ops)
    unknown = [op for op in ops if op not in DEVICE_OPS]
    if unknown:
      raise ValueError(f"the device runs no op {unknown[0]!r}; its ops: {', '.join(DEVICE_OPS)}")
    object.__setattr__(self, "ops", ops)
    digest = hashlib.sha1(mean.tobytes() + str(mean.shape).encode()
                          + (b"-" if std is None else std.tobytes())).hexdigest()
    object.__setattr__(self, "_key", (digest, self.photometric, self.pca, self.resize, ops))

  def __eq__(self, other) -> bool:
    return isinstance(other, DeviceInput) and self._key == other._key

  def __hash__(self) -> int:
    return hash(self._key)

  def __repr__(self) -> str:
    mean = (f"mean image {self.mean.shape}" if self.mean.ndim == 3
            else f"mean {self.mean.round(3).tolist()}")
    std = "" if self.std is None else f", std {self.std.round(3).tolist()}"
    resize = "" if self.resize is None else f", resize={self.resize}"
    ops = "" if self.ops == ALL_DEVICE_OPS else f", ops={self.ops}"
    return f"DeviceInput({mean}{std}, photometric={self.photometric}, pca={self.pca}{resize}{ops})"

  # -- the steps' entry points ------------------------------------------------
  def train(self, images: jax.Array, rng: jax.Array, step: jax.Array,
            window: jax.Array | None = None, crop: jax.Array | None = None) -> jax.Array:
    """uint8 [B, H, W, 3] -> distorted, normalised float32; the step's keys.

    rng: the train state's key; step: its step (the draws of a step are a
    function of both, so resumption is exact). window: the batch's "window";
    crop: its "crop" (canvases to resize first, see `resize_crop`).
    """
    if images.dtype != jnp.uint8:
      return images
    if crop is not None and (self.resize is None or "random_resize" not in self.ops):
      raise ValueError("a batch of canvases with a 'crop' needs DeviceInput(resize=<side>) and "
                       "the 'random_resize' op")
    x = images if crop is not None else images.astype(jnp.float32)
    for op in self.ops:  # the declared order (a canvas's resize and mirror first)
      x = DEVICE_OPS[op](self, x, rng, step, window, crop)
    return x

  def eval(self, images: jax.Array, window: jax.Array | None = None) -> jax.Array:
    """uint8 [B, H, W, 3] or multi-view [B, V, H, W, 3] -> normalised float32.

    window: [B, 4] or [B, V, 4], as eval_iterator yields it for the view.
    """
    if images.dtype != jnp.uint8:
      return images
    flat = images.reshape((-1,) + images.shape[-3:]).astype(jnp.float32)
    if window is not None:
      window = window.reshape(-1, 4)
    return self.normalize(flat, window).reshape(images.shape)

  def eval_batch(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """An eval_iterator batch with every image key ("image", dense "image_q<Q>")
    made network input and the "window*" keys dropped."""
    out = {k: v for k, v in batch.items() if not k.startswith("window")}
    for key, value in batch.items():
      if key.startswith("image"):
        out[key] = self.eval(value, batch.get("window" + key[len("image"):]))
    return out

  # -- normalisation -----------------------------------------------------------
  def normalize(self, x: jax.Array, window: jax.Array | None = None) -> jax.Array:
    """(x - mean) / std for float [N, H, W, 3] (0..255), per window when given."""
    size = x.shape[1:3]
    if window is None:
      mean = jnp.asarray(self.mean)
      if mean.ndim == 3 and mean.shape[:2] != size:
        if size[0] != size[1]:
          raise ValueError(f"a per-pixel mean needs square images or a window; got {size}")
        mean = resize_like_tf(mean, size[0])
      return self._scale(x - mean)
    window = window.astype(jnp.int32)
    if self.mean.ndim == 3:
      means = _window_means(jnp.asarray(self.mean), window, size)
    else:
      means = jnp.broadcast_to(jnp.asarray(self.mean), (window.shape[0], 1, 1, 3))
    means = jnp.where(window[:, 3, None, None, None] > 0, means[:, :, ::-1], means)
    return jnp.where(_inside_frame(window, size), self._scale(x - means), 0.0)

  def _scale(self, x: jax.Array) -> jax.Array:
    return x if self.std is None else x / jnp.asarray(self.std)


def _stream_key(rng: jax.Array, stream: int, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(rng, stream), step)


def _inside_frame(window: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[N, H, W, 1]: the pixel of the (possibly mirrored) crop lies inside its frame."""
  frame, top, left, flipped = (window[:, i] for i in range(4))
  rows = top[:, None] + jnp.arange(size[0])[None]
  columns = jnp.arange(size[1])[None]
  columns = left[:, None] + jnp.where(flipped[:, None] > 0, size[1] - 1 - columns, columns)
  inside_rows = (rows >= 0) & (rows < frame[:, None])
  inside_columns = (columns >= 0) & (columns < frame[:, None])
  return (inside_rows[:, :, None] & inside_columns[:, None, :])[..., None]


# The declared ops the device may run (cnnjax.preprocessing.presets.OPS, device_from not None):
# each one's step of `DeviceInput.train`, (input, x, rng, step, window, crop) -> x.


def _resize_step(d: DeviceInput, x, rng, step, window, crop):
  return x if crop is None else resize_crops(x, crop, d.resize)


def _flip_step(d: DeviceInput, x, rng, step, window, crop):
  return x  # a canvas's crop is mirrored with its resize (`resize_crop`); else the host flipped


def _photometric_step(d: DeviceInput, x, rng, step, window, crop):
  return x if d.photometric is None else d.photometric(x, _stream_key(rng, _PHOTOMETRIC_STREAM, step))


def _pca_step(d: DeviceInput, x, rng, step, window, crop):
  return x if d.pca is None else d.pca(x, _stream_key(rng, _PCA_STREAM, step))


def _normalize_step(d: DeviceInput, x, rng, step, window, crop):
  return d.normalize(x, window)


DEVICE_OPS = {
    "random_resize": _resize_step,
    "flip": _flip_step,
    "photometric": _photometric_step,
    "pca_lighting": _pca_step,
    "normalize": _normalize_step,
}
