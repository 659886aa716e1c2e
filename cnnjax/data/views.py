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
  "dense_multiscale"
               one key per scale Q, "image_q{Q}": [2, Hq, Wq, 3] (VGG/ResNet
               dense evaluation): the whole image with its shorter side
               rescaled to Q, aspect kept (a 300x450 image gives 256x384 at
               Q=256), and its mirror (`whole_image_op`). Batches need one
               image shape: datasets whose images vary in shape are scored one
               image at a time (`whole_image_batches`). The model runs fully
               convolutionally on each key and averages the class-score maps;
               keys are listed in `multiscale_keys(scales)`.
  "150crop"    image [150, 224, 224, 3] (VGG multi-crop): for each scale Q
               (default 256, 384, 512): shorter side -> Q, the whole image;
               a 5x5 regular grid of image_size crops and their mirrors
               (`grid_crops_op`; the order is documented there).
  "144crop"    image [144, 224, 224, 3] (GoogLeNet): for each scale Q in
               (256, 288, 320, 352): shorter side -> Q; three Q x Q squares
               (left/centre/right, or top/centre/bottom for portrait images);
               from each, the four corner and the centre image_size crops and the
               square resized to image_size; each also mirrored. View index
               v = ((scale * 3 + square) * 6 + crop) * 2 + mirrored.

Images already at the network's size (native_size == image_size: CIFAR,
digits) are not rescaled (upsampling 32 to 37 pixels shows the network
objects larger than it was trained on; the quickstart's 10-crop error was
8.67% against 0.67% centre). Their crops come from the training geometry
instead (the CIFAR recipe's `pad`-pixel zero padding, 4 by default):
  "10crop"     the corner and centre image_size crops of the zero-padded
               image (padded by `pad` on every side), then the same mirrored:
               crop v is padded[top:top + N, left:left + N] with (top, left)
               = five_crop_offsets(N + 2 pad, N)[v % 5].
  "144crop"    the same 10 crops (there are no scales or squares to take).
  "dense_multiscale" one key "image_q{N}": the image and its mirror.
Option `flip=False` (a net trained without mirroring, e.g. digits) drops
the mirrored views (10crop/144crop: 5 crops; dense_multiscale: [1, N, N, 3]), and
`pad=0` (trained without the padding) makes every crop the image itself;
cnnjax.evaluate sets both from the run's training augmentation.
An explicit resize_size (10crop) or scales (dense_multiscale, 144crop) restores
the rescaling views.

All views normalise on the 0..255 scale like training (a per-pixel mean is
subtracted at the resize_size square stage for "center" and "10crop", at
the whole rescaled image for "dense_multiscale", the mean image stretched
to it; eval_iterator finishes those on the host). With `device=True` the images stay
unnormalised and each image key gets its windows ("window" [4] or [V, 4],
"window_q{Q}" [2, 4]): where its pixels lie in the square the host would
have normalised (see `cnnjax.preprocessing.device`; the padded crops of
native-size images carry negative offsets, and the device zeroes the
padding as the host does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.image_ops import (Example, Op, center_crop_image, check_crop_fits, check_fits,
                                   check_named_options, decode_image,
                                   image_hw, resize_image, resize_shorter_side_image, shorter_side_shape,
                                   square_image)
from cnnjax.data.normalization import normalize_op, stats_if_needed
from cnnjax.data.sources import get_source, input_size
from cnnjax.errors import DataError
from cnnjax.preprocessing import presets as declared

# The views and their options, as declared (cnnjax.preprocessing.presets.VIEWS).
VIEWS = tuple(declared.VIEWS)
_VIEW_KWARGS = {name: set(view.options) for name, view in declared.VIEWS.items()}
DEFAULT_DENSE_SCALES = declared.VIEWS["dense_multiscale"].defaults["scales"]
GOOGLENET_SCALES = declared.VIEWS["144crop"].defaults["scales"]
NATIVE_PAD = declared.VIEWS["10crop"].defaults["pad"]  # the CIFAR recipe's padding (ResNet Sec. 4.2)
VGG_GRID = declared.VIEWS["150crop"].defaults["grid"]  # VGG Sec. 3.2: a 5x5 grid per scale
CROP_FRACTION = declared.VIEWS["center"].defaults["crop_fraction"]  # 224 of 256


def multiscale_keys(scales: Sequence[int] = DEFAULT_DENSE_SCALES) -> list[str]:
  return [f"image_q{q}" for q in scales]


def five_crop_offsets(side: int, size: int) -> list[tuple[int, int]]:
  """(top, left) of `five_crops` in a side x side square."""
  far, centre = side - size, (side - size) // 2
  return [(0, 0), (0, far), (far, 0), (far, far), (centre, centre)]


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


def _windows(rows) -> tf.Tensor:
  return tf.constant(rows, tf.int32)


@dataclasses.dataclass(frozen=True)
class _ViewContext:
  """What every view's builder needs (see `eval_op`)."""
  image_size: int
  native_size: int | None
  image_shape: tuple[int, int] | None
  normalize_op: Op
  device: bool
  kwargs: dict

  def normalized(self, image: tf.Tensor) -> tf.Tensor:
    return image if self.device else self.normalize_op({"image": image})["image"]

  def decoded(self, ex: Example) -> tf.Tensor:
    image = decode_image(ex["image"], self.native_size)
    if self.image_shape is not None:
      image.set_shape(list(self.image_shape) + [3])
    return image

  def with_windows(self, op: Op, windows: dict[str, list]) -> Op:
    """`op`, adding the windows of its image keys when the device normalises them."""
    if not self.device:
      return op
    return lambda ex: dict(op(ex), **{key: _windows(rows) for key, rows in windows.items()})

  @property
  def flips(self) -> tuple[int, ...]:
    return (0, 1) if bool(self.kwargs.get("flip", True)) else (0,)

  def native(self, *rescaling_options: str) -> bool:
    """The images already are the network's size and no option asks to rescale them."""
    return self.native_size == self.image_size and not set(rescaling_options) & set(self.kwargs)


def _center(c: _ViewContext) -> Op:
  if c.native("resize_size", "crop_fraction"):
    return c.with_windows(lambda ex: dict(ex, image=c.normalized(c.decoded(ex))),
                          {"window": [c.image_size, 0, 0, 0]})
  resize_size = c.kwargs.get("resize_size",
                             int(round(c.image_size / c.kwargs.get("crop_fraction", CROP_FRACTION))))
  check_crop_fits(c.image_size, resize_size, "center: resize_size")

  def center(ex: Example) -> Example:
    square = square_image(c.decoded(ex), resize_size)
    return dict(ex, image=center_crop_image(c.normalized(square), c.image_size, c.image_size))
  offset = (resize_size - c.image_size) // 2
  return c.with_windows(center, {"window": [resize_size, offset, offset, 0]})


def _padded_crops(c: _ViewContext, view: str) -> Op:
  """10crop/144crop of images at the network's size: crops of the zero-padded image."""
  pad, size = int(c.kwargs.get("pad", NATIVE_PAD)), c.image_size
  if pad < 0:
    raise DataError(f"{view}: pad must be >= 0 pixels; got {pad}")

  def padded_crops(ex: Example) -> Example:
    padded = tf.pad(c.normalized(c.decoded(ex)), [[pad, pad], [pad, pad], [0, 0]])
    crops = five_crops(padded, size)
    return dict(ex, image=tf.stack(with_mirrors(crops) if len(c.flips) == 2 else crops))
  return c.with_windows(padded_crops, {"window": [
      [c.native_size, top - pad, left - pad, mirrored] for mirrored in c.flips
      for top, left in five_crop_offsets(size + 2 * pad, size)]})


def _ten_crop(c: _ViewContext) -> Op:
  if c.native("resize_size", "scales"):
    return _padded_crops(c, "10crop")
  size = c.image_size
  resize_size = c.kwargs.get("resize_size", int(round(size / CROP_FRACTION)))
  check_crop_fits(size, resize_size, "10crop: resize_size")

  def ten_crop(ex: Example) -> Example:
    square = c.normalized(square_image(c.decoded(ex), resize_size))
    return dict(ex, image=tf.stack(with_mirrors(five_crops(square, size))))
  return c.with_windows(ten_crop, {"window": [[resize_size, top, left, mirrored] for mirrored in (0, 1)
                                              for top, left in five_crop_offsets(resize_size, size)]})


def _dense(c: _ViewContext) -> Op:
  """The whole image at each scale Q (shorter side -> Q, aspect kept) and its mirror."""
  scales = ((c.native_size,) if c.native("scales") else
            tuple(int(q) for q in c.kwargs.get("scales", DEFAULT_DENSE_SCALES)))
  op = whole_image_op(scales, lambda ex: {"image": c.normalized(ex["image"])}, flip=len(c.flips) == 2, decode=c.decoded,
                      rescale=not c.native("scales"))
  windows = {}
  for q, key in zip(scales, multiscale_keys(scales)):
    frame = q if c.image_shape is None else max(shorter_side_shape(c.image_shape, q))
    windows["window" + key[len("image"):]] = [[frame, 0, 0, mirrored] for mirrored in c.flips]
  return c.with_windows(op, windows)


def _grid_crops(c: _ViewContext) -> Op:
  scales = tuple(int(q) for q in c.kwargs.get("scales", DEFAULT_DENSE_SCALES))
  grid = int(c.kwargs.get("grid", VGG_GRID))
  for q in scales:
    check_crop_fits(c.image_size, q, "150crop: scale")
  crops_op = grid_crops_op(scales, c.image_size, grid)
  return c.with_windows(lambda ex: dict(ex, image=c.normalized(crops_op(
      dict(ex, image=c.decoded(ex)))["image"])),
                        {"window": [[c.image_size, 0, 0, 0]] * (len(scales) * grid * grid * 2)})


def _googlenet_crops(c: _ViewContext) -> Op:
  if c.native("resize_size", "scales"):
    return _padded_crops(c, "144crop")
  size = c.image_size
  scales = tuple(int(q) for q in c.kwargs.get("scales", GOOGLENET_SCALES))
  for q in scales:
    check_crop_fits(size, q, "144crop: scale")

  def multi_crop(ex: Example) -> Example:
    image = c.decoded(ex)
    per_scale = []
    for q in scales:
      squares = tf.cast(tf.stack(_three_squares(resize_shorter_side_image(image, q), q)),
                        tf.float32)                                    # [3, Q, Q, 3]
      crops = five_crops(squares, size) + [resize_image(squares, size, size)]
      crops = tf.stack(crops, axis=1)                                  # [3, 6, S, S, 3]
      mirrored = tf.stack([crops, tf.reverse(crops, axis=[-2])], axis=2)  # [3, 6, 2, S, S, 3]
      per_scale.append(tf.reshape(mirrored, [-1, size, size, 3]))
    stacked = tf.concat(per_scale, axis=0)
    stacked.set_shape([len(scales) * 36, size, size, 3])
    return dict(ex, image=c.normalized(stacked))
  return c.with_windows(multi_crop, {"window": [[size, 0, 0, 0]] * (len(scales) * 36)})


_BUILDERS = {"center": _center, "10crop": _ten_crop, "dense_multiscale": _dense,
             "144crop": _googlenet_crops, "150crop": _grid_crops}
assert set(_BUILDERS) == set(VIEWS), "every declared view has a builder"


def eval_op(view: str, *, image_size: int, native_size: int | None, normalize_op: Op,
            device: bool = False, image_shape: Sequence[int | None] | None = None,
            **kwargs) -> Op:
  """The op turning a decoded-or-encoded example into `view`'s deterministic crops.

  native_size: the side of a dataset whose images are all that square size.
  image_shape: (H, W) of a dataset whose images all have that shape (static
    shapes for the whole-image dense view), else None.
  device: leave the normalisation to the device and add the windows.
  """
  check_named_options("evaluation view", view, _VIEW_KWARGS, kwargs)
  shape = None
  if image_shape is not None and None not in tuple(image_shape)[:2]:
    shape = (int(image_shape[0]), int(image_shape[1]))
  return _BUILDERS[view](_ViewContext(image_size, native_size, shape, normalize_op, device,
                                      dict(kwargs)))


def apply_eval_view(image, view: str = "center", *, image_size: int,
                    native_size: int | None = None, mean=None, std=None,
                    **view_kwargs) -> dict[str, "np.ndarray"]:
  """One decoded image -> exactly what the evaluation pipeline feeds the network for it.

  Args:
    image: uint8 [H, W, C] (C = 1, 3 or 4; grey is replicated, alpha dropped)
      or the encoded bytes of a JPEG/PNG/GIF/BMP.
    view: one of VIEWS, with its `view_kwargs` (see the module docstring).
    image_size: the network's input side.
    native_size: the side of a dataset whose images are all square at that
      size (then "center" is the identity), else None.
    mean, std: the normalisation on the 0..255 scale (per channel [3] or,
      for mean, per pixel); None: none.

  Returns {key: float32 array}: "image" [S, S, 3] for "center", [V, S, S, 3]
  for the multi-crop views; "image_q{Q}" [2, Q, Q, 3] per scale for
  "dense_multiscale". The values equal those of `eval_iterator`'s float32 batches
  (the host-finished boundary) for the same image and options.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  from cnnjax.data.colour import normalize, to_float  # pylint: disable=import-outside-toplevel
  if view not in VIEWS:
    check_named_options("evaluation view", view, _VIEW_KWARGS, view_kwargs)
  if mean is None and std is not None:
    raise DataError("apply_eval_view: std without mean; pass mean=(0, 0, 0) to divide only")
  normalize_op = to_float() if mean is None else normalize(np.asarray(mean, np.float32),
                                                           None if std is None else
                                                           np.asarray(std, np.float32))
  op = eval_op(view, image_size=image_size, native_size=native_size, normalize_op=normalize_op,
               **view_kwargs)
  if isinstance(image, (bytes, np.bytes_)):
    tensor = tf.constant(bytes(image))
  else:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
      raise DataError(f"apply_eval_view takes a uint8 [H, W, C] image or encoded bytes, got "
                      f"{array.dtype} {array.shape}")
    tensor = tf.constant(array[..., None] if array.ndim == 2 else array)
  out = op({"image": tensor, "label": tf.constant(0)})
  return {key: tf.cast(value, tf.float32).numpy() for key, value in out.items()
          if key.startswith("image")}


def grid_crops(image: tf.Tensor, size: int, grid: int = VGG_GRID) -> tf.Tensor:
  """[grid * grid, size, size, 3]: crops on a regular grid over the whole image, row-major.

  Row i of the grid starts at round(i * (H - size) / (grid - 1)) (the first
  and last rows touch the image's edges), columns likewise.
  """
  h, w = image_hw(image)
  steps = tf.cast(max(grid - 1, 1), tf.float32)
  crops = []
  for i in range(grid):
    for j in range(grid):
      top = tf.cast(tf.round(tf.cast(h - size, tf.float32) * i / steps), tf.int32)
      left = tf.cast(tf.round(tf.cast(w - size, tf.float32) * j / steps), tf.int32)
      crop = image[top:top + size, left:left + size]
      crop.set_shape([size, size, 3])
      crops.append(crop)
  return tf.stack(crops)


def grid_crops_op(scales: Sequence[int], image_size: int, grid: int = VGG_GRID,
                  native_size: int | None = None) -> Op:
  """VGG's multi-crop (Sec. 3.2, Table 5): per scale Q, shorter side -> Q (the
  whole image, aspect kept), a grid x grid regular grid of image_size crops,
  each also mirrored: "image" [len(scales) * grid^2 * 2, S, S, 3] (150 for 3
  scales and the 5x5 grid), view v = (scale * grid^2 + row * grid + column) * 2
  + mirrored. Unnormalised (float32)."""
  scales = tuple(int(q) for q in scales)

  def op(ex: Example) -> Example:
    image = decode_image(ex["image"], native_size)
    per_scale = []
    for q in scales:
      rescaled = check_fits(tf.cast(resize_shorter_side_image(image, q), tf.float32),
                            image_size, image_size, "150crop")
      crops = grid_crops(rescaled, image_size, grid)                    # [G, S, S, 3]
      both = tf.stack([crops, tf.reverse(crops, axis=[-2])], axis=1)    # [G, 2, S, S, 3]
      per_scale.append(tf.reshape(both, [-1, image_size, image_size, 3]))
    stacked = tf.concat(per_scale, axis=0)
    stacked.set_shape([len(scales) * grid * grid * 2, image_size, image_size, 3])
    return dict(ex, image=stacked)
  return op


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



# ------------------------------------------------------- dense evaluation on whole images


def whole_image_op(scales: Sequence[int], normalize_op: Op, native_size: int | None = None, *,
                   flip: bool = True, decode: Callable[[Example], tf.Tensor] | None = None,
                   rescale: bool = True) -> Op:
  """VGG Sec. 3.2 / ResNet Sec. 4: the whole image at each scale, for dense evaluation.

  Key "image_q{Q}" [2, Hq, Wq, 3]: the image with its shorter side rescaled
  to Q and the aspect ratio kept (no crop; a 300x450 image gives 256x384 at
  Q=256), and its mirror ([1, Hq, Wq, 3] with flip=False). Images of one
  fixed shape batch (`eval_iterator`'s "dense_multiscale"); images of varying
  shapes are scored one at a time (`whole_image_batches`). rescale=False
  keeps images already at the network's size as they are.
  """
  scales = tuple(int(q) for q in scales)
  if not scales:
    raise DataError("dense evaluation needs at least one scale")
  decode = decode or (lambda ex: decode_image(ex["image"], native_size))

  def op(ex: Example) -> Example:
    image = decode(ex)
    out = {k: v for k, v in ex.items() if k != "image"}
    for q, key in zip(scales, multiscale_keys(scales)):
      rescaled = tf.cast(resize_shorter_side_image(image, q) if rescale else image, tf.float32)
      rescaled = normalize_op({"image": rescaled})["image"]
      out[key] = tf.stack([rescaled, tf.image.flip_left_right(rescaled)] if flip else [rescaled])
    return out
  return op


def whole_image_batches(dataset: str, *, scales: Sequence[int], rows: int = 1,
                        data_dir=None, split: str | None = None,
                        normalize: str = "per_channel", stats_split: str | None = None,
                        on_bad_image: str = "raise", crop_scales: Sequence[int] | None = None,
                        image_size: int = 224):
  """One example per batch, each key "image_q{Q}" [rows, 2, Hq, Wq, 3] at its own shape.

  crop_scales: also "image" [rows, V, image_size, image_size, 3], the
  150crop view at these scales (VGG's dense + multi-crop, Table 5).

  Row 0 is the example (mask True); rows 1.. repeat it with mask False, so
  a batch can be sharded over `rows` devices. Float32, normalised on the
  host (`DeviceInput.eval_batch` passes float batches through). Each
  distinct shape compiles the scoring step once more (measured cost in
  cnnjax/evaluate/ensemble.py's docstring). Single-process only: the processes
  of a multi-host run would need equal shapes in each global batch.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  if jax.process_count() > 1:
    raise DataError("dense evaluation of whole images runs in one process (its batches have a "
                    "shape per image); evaluate on one host, or use view '10crop'.")
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  split = split or source.default_eval_split()
  _, native = input_size(source, None)
  norm = normalize_op(normalize, stats_if_needed(source, stats_split, normalize, {}))
  dense_op = whole_image_op(scales, norm, native)
  crops_op = grid_crops_op(crop_scales, image_size, native_size=native) if crop_scales else None

  def op(ex):
    out = dense_op(ex)
    if crops_op is not None:
      out["image"] = norm({"image": crops_op(ex)["image"]})["image"]
    return out
  ds = source.read(source.share(split, 0, 1)).map(
      lambda ex: op({"image": ex["image"], "label": tf.cast(ex["label"], tf.int32)}),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
  for example in ds.as_numpy_iterator():
    batch = {k: np.repeat(np.asarray(v)[None], rows, axis=0) for k, v in example.items()}
    batch["mask"] = np.arange(rows) == 0
    yield batch
