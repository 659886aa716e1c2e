"""The stream's draws in numpy: epoch orders, per-example crop plans of each preset, and the
per-example reads an `fn.external_source` calls."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnjax.dali.records import PreparedSplit, image_hw, parse_example, record_payload
from cnnjax.errors import ConfigError, DataError
from cnnjax.preprocessing import presets

# numpy seed streams: the epoch permutation and the per-example draws never share a generator.
_EPOCH_STREAM, _EXAMPLE_STREAM = 1, 2

# ----------------------------------------------------------------------------
# Crop plans: which part of the image is decoded, resized and mirrored.


@dataclasses.dataclass(frozen=True)
class CropPlan:
  """The DALI graph's instructions for one example.

  Decode rows/columns [anchor, anchor + shape) of the image, resize the
  region [roi_start, roi_end) of that slice (float pixels, relative to the
  slice) to the output size with `interpolation`, mirror when `flip`.
  `window` is the batch's "window" row (see `cnnjax.preprocessing.device`).
  """
  anchor: tuple[int, int]
  shape: tuple[int, int]
  roi_start: tuple[float, float]
  roi_end: tuple[float, float]
  flip: bool
  interpolation: str
  window: tuple[int, int, int, int]


def inception_window(rng: np.random.Generator, height: int, width: int,
                     area_range: tuple[float, float] = (0.08, 1.0),
                     aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                     max_attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w): TF's sample_distorted_bounding_box draw for a whole-image box.

  Per attempt: an aspect ratio (width/height) uniform in range, then a
  height uniform among the integers whose rounded area fits area_range, then
  a uniform position; after max_attempts failures, the whole image.
  """
  min_area = np.float32(area_range[0]) * np.float32(width * height)
  max_area = np.float32(area_range[1]) * np.float32(width * height)
  for _ in range(max_attempts):
    aspect = np.float32(rng.random() * (aspect_range[1] - aspect_range[0]) + aspect_range[0])
    h = int(np.rint(np.sqrt(min_area / aspect)))
    max_h = int(np.rint(np.sqrt(max_area / aspect)))
    if int(np.rint(max_h * aspect)) > width:
      max_h = int((width + 0.5 - 1e-7) / aspect)
      if int(np.rint(max_h * aspect)) > width:
        max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
      h += int(rng.integers(max_h - h + 1))
    w = int(np.rint(h * aspect))
    area = np.float32(w * h)
    if area < min_area:
      h += 1
      w = int(np.rint(h * aspect))
      area = np.float32(w * h)
    if area < min_area:
      continue
    if area > max_area:
      h -= 1
      w = int(np.rint(h * aspect))
      area = np.float32(w * h)
    if area < min_area or area > max_area or not 0 < w <= width or not 0 < h <= height:
      continue
    top = int(rng.integers(height - h)) if h < height else 0
    left = int(rng.integers(width - w)) if w < width else 0
    return top, left, h, w
  return 0, 0, height, width


def shorter_side_size(height: int, width: int, target: int) -> tuple[int, int]:
  """(h, w) after scaling the shorter side to `target` (the rounding of cnnjax.data.image_ops)."""
  scale = np.float32(target) / np.float32(min(height, width))
  new_h = target if height <= width else int(np.round(np.float32(height) * scale))
  new_w = int(np.round(np.float32(width) * scale)) if height <= width else target
  return max(new_h, target), max(new_w, target)


def _region_plan(height: int, width: int, resized: tuple[int, int], top: int, left: int,
                 size: int, flip: bool, window: tuple[int, int, int, int]) -> CropPlan:
  """The plan for a size x size crop at (top, left) of the image resized to `resized`.

  Decodes the crop's region of the original plus a margin for the
  resampling filter's reach (the whole image resize sees those pixels too).
  """
  scale_y, scale_x = height / resized[0], width / resized[1]
  y0, y1 = top * scale_y, (top + size) * scale_y
  x0, x1 = left * scale_x, (left + size) * scale_x
  margin_y, margin_x = int(np.ceil(max(1.0, scale_y))) + 1, int(np.ceil(max(1.0, scale_x))) + 1
  sy0, sx0 = max(0, int(np.floor(y0)) - margin_y), max(0, int(np.floor(x0)) - margin_x)
  sy1, sx1 = min(height, int(np.ceil(y1)) + margin_y), min(width, int(np.ceil(x1)) + margin_x)
  return CropPlan(anchor=(sy0, sx0), shape=(sy1 - sy0, sx1 - sx0),
                  roi_start=(y0 - sy0, x0 - sx0), roi_end=(y1 - sy0, x1 - sx0),
                  flip=flip, interpolation="bilinear", window=window)


@dataclasses.dataclass
class _Geometry:
  """Where a plan stands between two declared ops (`Preset.plan` runs them in order).

  `box` (top, left, height, width) is the current region: in pixels of the
  image resized to `resized`, or of the original while `resized` is None
  (Inception: the window is decoded and resized to S x S by itself).
  `window` is set where the host would normalise and moved by later crops
  and flips, as `cnnjax.data.geometry`'s window record is.
  """
  box: tuple[int, int, int, int]
  resized: tuple[int, int] | None = None
  interpolation: str = "bilinear"
  flip: bool = False
  window: list[int] | None = None


def _resize_to(g: _Geometry, height: int, width: int, target: int) -> None:
  g.resized = shorter_side_size(height, width, target)
  g.box = (0, 0) + g.resized


def _center_crop(g, rng, p, height, width) -> None:
  top, left, h, w = g.box
  side = p.options["resize_size"]
  g.box = (top + (h - side) // 2, left + (w - side) // 2, side, side)


def _random_crop(g, rng, p, height, width) -> None:
  top, left, h, w = g.box
  dy, dx = int(rng.integers(h - p.image_size + 1)), int(rng.integers(w - p.image_size + 1))
  g.box = (top + dy, left + dx, p.image_size, p.image_size)
  if g.window is not None:
    g.window[1] += dy
    g.window[2] += dx


def _inception_crop(g, rng, p, height, width) -> None:
  o = p.options
  g.box = inception_window(rng, height, width, o["area_range"], o["aspect_range"],
                           o["max_attempts"])


def _random_resize(g, rng, p, height, width) -> None:
  methods = p.options["interpolations"]
  g.interpolation = methods[int(rng.integers(len(methods)))]


def _flip(g, rng, p, height, width) -> None:
  g.flip = bool(p.options["flip"] and rng.random() < 0.5)
  if g.window is not None:
    g.window[3] = int(g.flip)


def _normalize(g, rng, p, height, width) -> None:
  """The device normalises; the window records the frame the host would have normalised."""
  g.window = [p.image_size if g.resized is None else g.box[2], 0, 0, 0]


def _on_device(g, rng, p, height, width) -> None:
  """A colour op: the train step's (`cnnjax.preprocessing.device`), nothing to plan."""


# The DALI plan's step of each declared op (cnnjax.preprocessing.presets.OPS): `Preset.plan`
# runs a preset's steps in its declared order, so every draw comes in that order.
DALI_OPS = {
    "decode": lambda g, rng, p, height, width: None,  # the graph decodes the planned slice
    "resize_shorter_side": lambda g, rng, p, height, width: _resize_to(g, height, width,
                                                                       p.options["resize_size"]),
    "center_crop": _center_crop,
    "random_resize_shorter_side": lambda g, rng, p, height, width: _resize_to(
        g, height, width, int(rng.integers(p.options["scale_min"], p.options["scale_max"] + 1))),
    "random_crop": _random_crop,
    "inception_crop": _inception_crop,
    "random_resize": _random_resize,
    "flip": _flip,
    "photometric": _on_device,
    "pca_lighting": _on_device,
    "normalize": _normalize,
}
# The ops that resize the whole image (antialiased, as tf.data's shorter-side resize is);
# a preset without one resizes its decoded window alone, without antialiasing (Inception).
_WHOLE_IMAGE_RESIZES = frozenset({"resize_shorter_side", "random_resize_shorter_side"})
PRESETS = presets.supported(lambda op: op in DALI_OPS)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A training preset with its options resolved and checked (`make_preset`)."""
  name: str
  image_size: int
  options: Mapping[str, Any]

  @property
  def ops(self) -> tuple[str, ...]:
    return presets.PRESETS[self.name].ops

  @property
  def antialias(self) -> bool:
    return any(op in _WHOLE_IMAGE_RESIZES for op in self.ops)

  def plan(self, rng: np.random.Generator, height: int, width: int) -> CropPlan:
    """The example's crop plan: the declared ops' draws from `rng`, in order (ValueError
    when the image is too small for a crop)."""
    g = _Geometry(box=(0, 0, height, width))
    for op in self.ops:
      DALI_OPS[op](g, rng, self, height, width)
    window = tuple(g.window) if g.window is not None else (self.image_size, 0, 0, 0)
    top, left, h, w = g.box
    if g.resized is None:  # a window of the original, resized by itself
      return CropPlan(anchor=(top, left), shape=(h, w), roi_start=(0.0, 0.0),
                      roi_end=(float(h), float(w)), flip=g.flip, interpolation=g.interpolation,
                      window=window)
    return _region_plan(height, width, g.resized, top, left, self.image_size, g.flip, window)


def make_preset(augment: str, image_size: int, augment_kwargs: dict[str, Any] | None = None) -> Preset:
  """The checked geometry of a preset (ConfigError naming the bad name or option)."""
  if not isinstance(image_size, int) or image_size < 1:
    raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
  options = presets.check_options(
      augment, dict(augment_kwargs or {}), image_size, error=ConfigError, choices=PRESETS,
      where=" for the DALI input (the others run on tf.data: cnnjax.data.train_iterator)")
  return Preset(augment, image_size, options)


# ----------------------------------------------------------------------------
# The per-example source: position -> record -> plan.


def _seed_words(seed: int) -> list[int]:
  seed = int(seed) & ((1 << 64) - 1)
  return [seed & 0xFFFFFFFF, seed >> 32]


def share_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of a process's contiguous share (the sizes of tfds.even_splits)."""
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (1 if process_index < extra else 0)


def epoch_permutation(seed: int, process_index: int, epoch: int, size: int) -> np.ndarray:
  """The order of a process's share in `epoch`: a function of (seed, process, epoch)."""
  rng = np.random.default_rng(_seed_words(seed) + [process_index, _EPOCH_STREAM, epoch])
  return rng.permutation(size)


def example_rng(seed: int, process_index: int, position: int) -> np.random.Generator:
  """The generator of the example at stream position t = epoch * share size + place."""
  return np.random.default_rng(_seed_words(seed) + [process_index, _EXAMPLE_STREAM, position])


# DALI's enum values (nvidia.dali.types.DALIInterpType), kept here so the source needs no DALI.
_INTERP_CODE = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 4}


class ExampleSource:
  """`fn.external_source` callback: SampleInfo -> one example's encoded image, plan and label.

  Stateless apart from caches (open files, the current epoch's permutation),
  so DALI may call it from parallel workers; the sample at (iteration, row)
  is example `t = (start_step + iteration) * local_batch + row_offset + row`
  of this process's endless stream.
  """

  def __init__(self, split: PreparedSplit, indices: Sequence[np.ndarray], preset: Preset, *,
               seed: int, process_index: int, process_count: int, local_batch: int,
               start_step: int, row_offset: int = 0):
    self.split, self.preset = split, preset
    self.seed, self.process_index = seed, process_index
    self.local_batch, self.start_step, self.row_offset = local_batch, start_step, row_offset
    self.share_start, share_stop = share_bounds(split.num_examples, process_index, process_count)
    self.share_size = share_stop - self.share_start
    self.first_example = np.cumsum([0] + list(split.shard_lengths))
    self.indices = list(indices)
    self._files: dict[int, int] = {}
    self._epoch: tuple[int, np.ndarray] | None = None
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_files={}, _epoch=None, _lock=None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  # -- positions ----------------------------------------------------------------
  def position(self, iteration: int, row: int) -> int:
    return (self.start_step + iteration) * self.local_batch + self.row_offset + row

  def example_at(self, position: int) -> int:
    """The split-wide example number at stream position `position`."""
    epoch, place = divmod(position, self.share_size)
    with self._lock:
      if self._epoch is None or self._epoch[0] != epoch:
        self._epoch = (epoch, epoch_permutation(self.seed, self.process_index, epoch, self.share_size))
      order = self._epoch[1]
    return self.share_start + int(order[place])

  def describe(self, example: int) -> str:
    shard = int(np.searchsorted(self.first_example, example, side="right")) - 1
    record = example - int(self.first_example[shard])
    return (f"example {example} of {self.split.dataset!r} split {self.split.split!r} "
            f"(record {record} of {self.split.files[shard]})")

  # -- reading --------------------------------------------------------------------
  def read(self, example: int) -> tuple[np.ndarray, int]:
    """(encoded image bytes as uint8, label) of a split-wide example number."""
    shard = int(np.searchsorted(self.first_example, example, side="right")) - 1
    offset, size = self.indices[shard][example - int(self.first_example[shard])]
    fd = self._files.get(shard)
    if fd is None:
      fd = self._files[shard] = os.open(self.split.files[shard], os.O_RDONLY)
    record = os.pread(fd, int(size), int(offset))
    try:
      if len(record) != size:
        raise DataError("the record is shorter than its index says")
      features = parse_example(record_payload(record))
      image = features.get(self.split.image_key)
      label = features.get(self.split.label_key)
      if not image or not label:
        raise DataError(f"it has no {self.split.image_key!r} image or {self.split.label_key!r} label")
      if not isinstance(label[0], int) or isinstance(image[0], (int, float)):
        raise DataError(f"its {self.split.image_key!r} is not bytes or its "
                        f"{self.split.label_key!r} not an integer")
    except DataError as error:
      raise DataError(f"cannot read {self.describe(example)}: {error}; prepare the dataset again") from None
    label = int(label[0])
    if not 0 <= label < self.split.num_classes:
      raise DataError(f"label {label} is outside [0, {self.split.num_classes}) at "
                      f"{self.describe(example)}")
    return np.frombuffer(image[0], np.uint8), label

  def sample(self, position: int) -> tuple[np.ndarray, int, CropPlan]:
    example = self.example_at(position)
    encoded, label = self.read(example)
    hw = image_hw(encoded)
    if hw is None:
      raise DataError(f"{self.describe(example)} is not a readable JPEG or PNG (no image size in "
                      "its header); fix or remove the image and prepare the dataset again")
    try:
      plan = self.preset.plan(example_rng(self.seed, self.process_index, position), *hw)
    except ValueError as error:
      raise DataError(f"{self.describe(example)} ({hw[0]}x{hw[1]}) is too small for the "
                      f"{self.preset.name!r} crop of {self.preset.image_size}: {error}") from None
    return encoded, label, plan

  def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
    encoded, label, plan = self.sample(self.position(sample_info.iteration, sample_info.idx_in_batch))
    return plan_arrays(encoded, label, plan)


def plan_arrays(encoded: np.ndarray, label: int, plan: CropPlan) -> tuple[np.ndarray, ...]:
  """The external source's outputs for one example (the order `_graph` expects)."""
  return (encoded, np.asarray(plan.anchor, np.int32), np.asarray(plan.shape, np.int32),
          np.asarray(plan.roi_start, np.float32), np.asarray(plan.roi_end, np.float32),
          np.asarray(plan.flip, np.int32), np.asarray(_INTERP_CODE[plan.interpolation], np.int32),
          np.asarray(label, np.int32), np.asarray(plan.window, np.int32))
