"""train_iterator and eval_iterator: tf.data pipelines yielding host-local numpy batches.

Training stream (per process):

  share of the split (tfds even split, images still encoded)
    -> for epoch e = start_epoch, start_epoch + 1, ...:
         shard files in an order drawn from (seed, process, e), interleaved;
         a shuffle buffer seeded by the same; number the elements with
         their global index  g = e * n + position
    -> skip the elements of the first `start_step` batches (before decoding)
    -> decode + augment with stateless randomness seeded by (seed, process, g)
    -> batch (global_batch_size // process_count), prefetch

Because every random choice is a pure function of (seed, process, epoch) or
(seed, process, g), a fresh iterator with start_step=n yields exactly the
batches an uninterrupted one yields after n batches, whatever the parallelism.

Evaluation stream: the share in fixed order -> decode + view -> pad with
masked zeros so that every process yields the same number of full batches
(ceil(largest share / per-process batch)); mask marks the real examples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

from cnnjax._processes import local_batch_size, resolve_process
from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.augment import DATA_ERROR_MARKER, compose, train_ops
from cnnjax.data.image_ops import round_to_uint8
from cnnjax.data.normalization import (NORMALIZATIONS, normalize_op, pca_for,  # noqa: F401
                                       stats_if_needed)
from cnnjax.data.sources import Source, check_training_classes, get_source, input_size
from cnnjax.data.views import eval_op
from cnnjax.errors import DataError
from cnnjax.preprocessing import presets
from cnnjax.preprocessing.boundary import (HostBatch, device_finishes, eval_boundary,
                                           resolve_boundary)

# Shuffle buffer: the whole share when it fits in about this many bytes of
# encoded images (CIFAR, digits: a full permutation per epoch), else at least
# MIN_SHUFFLE_BUFFER examples.
SHUFFLE_BUFFER_BYTES = 1 << 30
MIN_SHUFFLE_BUFFER = 10_000


def train_iterator(dataset: str, *, data_dir: str | os.PathLike | None = None,
                   split: str | None = None, global_batch_size: int, augment: str = "none",
                   augment_kwargs: dict[str, Any] | None = None, image_size: int | None = None,
                   normalize: str = "per_channel", seed: int = 0, start_step: int = 0,
                   process_index: int | None = None, process_count: int | None = None,
                   shuffle_buffer_size: int | None = None, stats_split: str | None = None,
                   on_bad_image: str = "raise", boundary: str = "auto",
                   max_resolution: int = 0) -> Iterator[HostBatch]:
  """Infinite stream of this process's share of each global training batch.

  Yields `HostBatch`es {"image": [b, H, W, 3], "label": int32 [b], ...}
  with b = global_batch_size // process_count. `boundary` says where the
  host stops (`cnnjax.preprocessing.boundary`): "float32" finished images;
  "uint8" images cropped and flipped but neither colour-augmented nor
  normalised, with "window": int32 [b, 4] for the step's `DeviceInput.train`
  (`cnnjax.data.device_input`); "canvas" (Inception) each crop at the
  top-left of a uint8 canvas with "crop": int32 [b, 3] (height, width,
  flipped), which the step resizes and mirrors; "auto" resolves by the
  backend. See the module docstring for the determinism and exact-resume
  guarantees. `normalize` is one of NORMALIZATIONS; statistics come from
  `stats_split` (default: the dataset's training split, whole, so every
  process uses the same numbers).

  max_resolution > 0 reads the copy of the dataset bounded at that longer
  side (`cnnjax.data.bounded`; prepared once); statistics still come from
  the original. It is for training only: evaluate on the original.
  """
  original = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  check_training_classes(dataset, original.num_classes)
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image, max_resolution=max_resolution)
  split = split or source.default_train_split()
  process_index, process_count = resolve_process(process_index, process_count)
  local_batch = local_batch_size(global_batch_size, process_count)
  if start_step < 0:
    raise DataError(f"start_step must be >= 0, got {start_step}")
  share = source.share(split, process_index, process_count)
  num_local = source.num_examples(share)
  if num_local == 0:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples for process "
                    f"{process_index} of {process_count}")
  image_size, native = input_size(original, image_size)
  augment_kwargs = dict(augment_kwargs or {})
  presets.check_options(augment, augment_kwargs, image_size, error=DataError)  # before statistics
  boundary = resolve_boundary(boundary, error=DataError)
  if boundary == "dali":
    raise DataError("boundary 'dali' is the DALI pipeline's (cnnjax.dali.train_iterator); "
                    "tf.data stops at 'float32', 'uint8' or 'canvas'")
  stats = stats_if_needed(original, stats_split, normalize, augment_kwargs)
  augmentation = compose(train_ops(
      augment, image_size=image_size, native_size=native,
      normalize_op=normalize_op(normalize, stats), pca=pca_for(augment_kwargs, stats),
      boundary=boundary, **augment_kwargs))
  buffer = shuffle_buffer_size or _default_shuffle_buffer(source, split, num_local)
  seeds = _stream_seeds(seed, process_index)
  start_epoch, skip = divmod(start_step * local_batch, num_local)
  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(
      _epoch_fn(source, share, num_local, buffer, seeds[0]))
  ds = ds.skip(skip).map(
      _example_fn(augmentation, source.num_classes, seeds[1], device_finishes(boundary),
                  process_index),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = _batched(ds, local_batch, image_size).prefetch(tf.data.AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, f"training data of {dataset!r} ({split})")


def _stream_seeds(seed: int, process_index: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(epoch seeds, element seeds): the process's two independent seed streams."""
  base_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF], tf.int64), process_index)
  return (tf.random.experimental.stateless_fold_in(base_seed, 1),
          tf.random.experimental.stateless_fold_in(base_seed, 2))


def _epoch_fn(source: Source, share, num_local: int, buffer: int, epoch_seeds: tf.Tensor):
  """epoch e -> the share in that epoch's order, each element numbered e * n + position."""
  def epoch(e):
    shuffle_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(epoch_seeds, e),
        minval=0, maxval=2**62, dtype=tf.int64)
    shuffled = source.read_epoch(share, shuffle_seed).shuffle(
        min(buffer, num_local), seed=shuffle_seed, reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda i, ex: dict(ex, index=e * num_local + i))
  return epoch


def _example_fn(augmentation, num_classes: int, element_seeds: tf.Tensor, device: bool,
                process_index: int):
  """A numbered example -> the batch row: augmented with the seed of its number."""
  def process(ex):
    label = _checked_label(
        ex["label"], num_classes, ex["index"],
        f"training example (epoch * share size + position in the shuffled epoch; "
        f"process {process_index})")
    ex = augmentation({"image": ex["image"], "label": label,
                       "rng": tf.random.experimental.stateless_fold_in(element_seeds, ex["index"])})
    out = {"image": ex["image"] if device else tf.cast(ex["image"], tf.float32),
           "label": tf.cast(label, tf.int32)}
    for key in ("window", "crop"):  # where the step finishes the geometry
      if device and key in ex:
        out[key] = tf.cast(ex[key], tf.int32)
    return out
  return process


def _batched(ds: tf.data.Dataset, local_batch: int, image_size: int) -> tf.data.Dataset:
  if "crop" not in ds.element_spec:
    return ds.batch(local_batch, drop_remainder=True)
  # boundary "canvas": the batching zero-pads each crop to the canvas
  shapes = {key: spec.shape for key, spec in ds.element_spec.items()}
  shapes["image"] = tf.TensorShape([image_size, image_size, 3])
  return ds.padded_batch(local_batch, padded_shapes=shapes, drop_remainder=True)


def eval_iterator(dataset: str, *, data_dir: str | os.PathLike | None = None,
                  split: str | None = None, global_batch_size: int, view: str = "center",
                  view_kwargs: dict[str, Any] | None = None, image_size: int | None = None,
                  normalize: str = "per_channel", process_index: int | None = None,
                  process_count: int | None = None, stats_split: str | None = None,
                  on_bad_image: str = "raise", boundary: str = "auto"
                  ) -> Iterator[HostBatch]:
  """Finite stream of padded evaluation batches with a "mask" of real examples.

  Every example of the split is yielded exactly once across all processes
  with mask True; each process yields the same number of batches. The image
  format depends on `view` (see `cnnjax.data.views`): float32 at boundary
  "float32", else uint8 plus the views' "window*" keys, for
  `DeviceInput.eval` / `eval_batch` (evaluation has no canvas or DALI path).
  """
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  split = split or source.default_eval_split()
  process_index, process_count = resolve_process(process_index, process_count)
  local_batch = local_batch_size(global_batch_size, process_count)
  shares = [source.share(split, p, process_count) for p in range(process_count)]
  share_sizes = [source.num_examples(s) for s in shares]
  if max(share_sizes) == 0:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples")
  num_batches = math.ceil(max(share_sizes) / local_batch)
  num_local = share_sizes[process_index]
  image_size, native = input_size(source, image_size)
  device = device_finishes(eval_boundary(resolve_boundary(boundary, error=DataError)))
  stats = stats_if_needed(source, stats_split, normalize, {})
  if view == "dense_multiscale" and normalize == "per_pixel" and native is None:
    device = False  # a mean image stretched to whole non-square images: the host's (float32)
  view_fn = eval_op(view, image_size=image_size, native_size=native,
                    normalize_op=normalize_op(normalize, stats), device=device,
                    image_shape=source.image_shape[:2], **dict(view_kwargs or {}))
  num_classes = source.num_classes

  def process(index, ex):
    label = _checked_label(ex["label"], num_classes, index,
                           f"example (position in process {process_index}'s share of {split!r})")
    out = view_fn({"image": ex["image"], "label": label})
    out = {k: (tf.cast(v, tf.int32) if k == "label" or k.startswith("window") else
               round_to_uint8(v) if device else tf.cast(v, tf.float32))
           for k, v in out.items()}
    out["mask"] = tf.constant(True)
    return out

  ds = source.read(shares[process_index]).enumerate()
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  spec = ds.element_spec
  for key, tensor_spec in spec.items():
    if not tensor_spec.shape.is_fully_defined():
      raise DataError(f"view {view!r} produced {key!r} with unknown shape {tensor_spec.shape}; "
                      "evaluation batches need fixed shapes" + (
                          f" (the images of {dataset!r} vary in shape: score whole images one at "
                          "a time with cnnjax.evaluate --views dense_multiscale, or "
                          "cnnjax.data.views.whole_image_batches)" if view == "dense_multiscale"
                          else ""))
  padding = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}
  pad_count = num_batches * local_batch - num_local
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(pad_count))
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, f"evaluation data of {dataset!r} ({split})")


# ----------------------------------------------------------------------------
# Helpers.


def _default_shuffle_buffer(source: Source, split: str, num_local: int) -> int:
  try:
    total_bytes = int(source.builder.info.splits[split].num_bytes)
    total_examples = int(source.builder.info.splits[split].num_examples)
  except Exception:  # noqa: BLE001 - mocked or unknown sizes
    total_bytes, total_examples = 0, 0
  if total_bytes > 0 and total_examples > 0:
    per_example = total_bytes / total_examples
    return max(MIN_SHUFFLE_BUFFER, min(num_local, int(SHUFFLE_BUFFER_BYTES / per_example)))
  return max(MIN_SHUFFLE_BUFFER, min(num_local, MIN_SHUFFLE_BUFFER))


def _checked_label(label, num_classes: int, index, where: str):
  """The label, after a cheap assertion that it is a valid class id."""
  valid = tf.logical_and(label >= 0, label < num_classes)
  message = tf.strings.format(
      DATA_ERROR_MARKER + " label {} is outside [0, " + str(num_classes) + ") at " + where + " {}",
      (label, index))
  check = tf.debugging.Assert(valid, [message])
  with tf.control_dependencies([check]):
    return tf.identity(label)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _numpy_batches(ds: tf.data.Dataset, what: str) -> Iterator[dict[str, np.ndarray]]:
  """Iterates `ds` as numpy, turning our tf assertions into DataError."""
  iterator = iter(ds)
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as error:
      message = error.message
      if DATA_ERROR_MARKER in message:
        detail = message[message.index(DATA_ERROR_MARKER) + len(DATA_ERROR_MARKER):]
        detail = detail.split("\n")[0].rstrip("]").strip().replace("\\'", "'")
        raise DataError(f"{what}: {detail}") from None
      raise DataError(f"{what}: cannot read an example: {message.splitlines()[0]}") from error
    yield {k: v.numpy() for k, v in batch.items()}
