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

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data import augment as ops_lib
from cnnjax.data.augment import DATA_ERROR_MARKER, Op, compose, train_ops
from cnnjax.data.sources import Source, get_source
from cnnjax.data.stats import (DEFAULT_MAX_EXAMPLES, IMAGENET_MEAN_RGB, IMAGENET_PCA_EIGVEC,
                               IMAGENET_PCA_STD, IMAGENET_STD_RGB, ImageStats, compute_stats,
                               load_or_compute_stats, stats_path, stats_resolution)
from cnnjax.data.views import eval_op
from cnnjax.errors import DataError, close_matches

NORMALIZATIONS = ("per_channel", "per_channel_std", "per_pixel", "imagenet", "imagenet_mean", "none")
DEFAULT_VARIABLE_IMAGE_SIZE = 224
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
                   on_bad_image: str = "raise") -> Iterator[dict[str, np.ndarray]]:
  """Infinite stream of this process's share of each global training batch.

  Yields {"image": float32 [b, H, W, 3], "label": int32 [b]} with
  b = global_batch_size // process_count; the images are uint8, neither
  colour-distorted nor normalised, with augment="inception" and
  augment_kwargs photometric="device" (the train step does both, see
  `cnnjax.train.photometric` and `channel_normalization`). See the module
  docstring for the determinism and exact-resume guarantees. `normalize` is one of
  NORMALIZATIONS; statistics come from `stats_split` (default: the dataset's
  training split, whole, so every process uses the same numbers).
  """
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  split = split or source.default_train_split()
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  if start_step < 0:
    raise DataError(f"start_step must be >= 0, got {start_step}")
  share = source.share(split, process_index, process_count)
  num_local = source.num_examples(share)
  if num_local == 0:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples for process "
                    f"{process_index} of {process_count}")
  image_size, native = _image_size(source, image_size)
  augment_kwargs = dict(augment_kwargs or {})
  stats = _stats_if_needed(source, stats_split, normalize, augment_kwargs)
  normalize_op = _normalize_op(normalize, stats)
  pca = _pca(augment_kwargs, stats)
  ops = train_ops(augment, image_size=image_size, native_size=native, normalize_op=normalize_op,
                  pca=pca, **augment_kwargs)
  augmentation = compose(ops)
  buffer = shuffle_buffer_size or _default_shuffle_buffer(source, split, num_local)
  num_classes = source.num_classes

  base_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF], tf.int64), process_index)
  epoch_seeds = tf.random.experimental.stateless_fold_in(base_seed, 1)
  element_seeds = tf.random.experimental.stateless_fold_in(base_seed, 2)

  def epoch(e):
    shuffle_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(epoch_seeds, e),
        minval=0, maxval=2**62, dtype=tf.int64)
    shuffled = source.read_epoch(share, shuffle_seed).shuffle(
        min(buffer, num_local), seed=shuffle_seed, reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda i, ex: dict(ex, index=e * num_local + i))

  def process(ex):
    label = _checked_label(
        ex["label"], num_classes, ex["index"],
        f"training example (epoch * share size + position in the shuffled epoch; "
        f"process {process_index})")
    ex = augmentation({"image": ex["image"], "label": label,
                       "rng": tf.random.experimental.stateless_fold_in(element_seeds, ex["index"])})
    image = ex["image"]  # uint8 only when the photometric ops run on the device
    image = image if image.dtype == tf.uint8 else tf.cast(image, tf.float32)
    return {"image": image, "label": tf.cast(label, tf.int32)}

  start_epoch, skip = divmod(start_step * local_batch, num_local)
  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch)
  ds = ds.skip(skip)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, f"training data of {dataset!r} ({split})")


def eval_iterator(dataset: str, *, data_dir: str | os.PathLike | None = None,
                  split: str | None = None, global_batch_size: int, view: str = "center",
                  view_kwargs: dict[str, Any] | None = None, image_size: int | None = None,
                  normalize: str = "per_channel", process_index: int | None = None,
                  process_count: int | None = None, stats_split: str | None = None,
                  on_bad_image: str = "raise") -> Iterator[dict[str, np.ndarray]]:
  """Finite stream of padded evaluation batches with a "mask" of real examples.

  Every example of the split is yielded exactly once across all processes
  with mask True; each process yields the same number of batches. The image
  format depends on `view` (see `cnnjax.data.views`).
  """
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  split = split or source.default_eval_split()
  process_index, process_count = _process(process_index, process_count)
  local_batch = _local_batch(global_batch_size, process_count)
  shares = [source.share(split, p, process_count) for p in range(process_count)]
  share_sizes = [source.num_examples(s) for s in shares]
  if max(share_sizes) == 0:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples")
  num_batches = math.ceil(max(share_sizes) / local_batch)
  num_local = share_sizes[process_index]
  image_size, native = _image_size(source, image_size)
  stats = _stats_if_needed(source, stats_split, normalize, {})
  view_fn = eval_op(view, image_size=image_size, native_size=native,
                    normalize_op=_normalize_op(normalize, stats), **dict(view_kwargs or {}))
  num_classes = source.num_classes

  def process(index, ex):
    label = _checked_label(ex["label"], num_classes, index,
                           f"example (position in process {process_index}'s share of {split!r})")
    out = view_fn({"image": ex["image"], "label": label})
    out = {k: (tf.cast(v, tf.float32) if k != "label" else tf.cast(v, tf.int32))
           for k, v in out.items()}
    out["mask"] = tf.constant(True)
    return out

  ds = source.read(shares[process_index]).enumerate()
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  spec = ds.element_spec
  for key, tensor_spec in spec.items():
    if not tensor_spec.shape.is_fully_defined():
      raise DataError(f"view {view!r} produced {key!r} with unknown shape {tensor_spec.shape}; "
                      "evaluation batches need fixed shapes")
  padding = {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}
  pad_count = num_batches * local_batch - num_local
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(pad_count))
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, f"evaluation data of {dataset!r} ({split})")


# ----------------------------------------------------------------------------
# Helpers.


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """Defaults from JAX (imported lazily: this module must not need an accelerator)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"process_index must be in [0, process_count); got {process_index} of {process_count}")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise DataError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                    f"process count {process_count}")
  return global_batch_size // process_count


def _image_size(source: Source, image_size: int | None) -> tuple[int, int | None]:
  """(network input side, the dataset's fixed square side or None)."""
  height, width, _ = source.image_shape
  native = height if (height is not None and height == width) else None
  if image_size is None:
    image_size = native or DEFAULT_VARIABLE_IMAGE_SIZE
  if image_size < 1:
    raise DataError(f"image_size must be positive, got {image_size}")
  return int(image_size), native


def _stats_if_needed(source: Source, stats_split: str | None, normalize: str,
                     augment_kwargs: dict[str, Any]) -> ImageStats | None:
  if normalize not in NORMALIZATIONS:
    raise DataError(f"unknown normalize {normalize!r}: {close_matches(normalize, NORMALIZATIONS)}")
  needs = normalize in ("per_channel", "per_channel_std", "per_pixel") or (
      augment_kwargs.get("pca_color") is True)
  if not needs:
    return None
  return dataset_stats(source, stats_split)


def dataset_stats(source: Source, stats_split: str | None = None,
                  max_examples: int | None = DEFAULT_MAX_EXAMPLES) -> ImageStats:
  """Mean/std/PCA of the training split, computed once and cached beside the data."""
  split = stats_split or source.default_train_split()
  source.check_split(split)
  resolution = stats_resolution(source.image_shape)
  dataset_id = source.builder.info.full_name + ("-mocked" if source.is_mocked else "")
  if source.name.startswith("image_folder:") or source.name == "digits":
    dataset_id = os.path.relpath(os.fspath(source.builder.data_dir), source.data_dir)
  path = stats_path(source.data_dir, dataset_id, split, resolution, max_examples)
  return load_or_compute_stats(
      path, lambda: compute_stats(source.read(split), resolution, max_examples))


def _normalization_arrays(normalize: str, stats: ImageStats | None
                          ) -> tuple[np.ndarray, np.ndarray | None] | None:
  """(mean, std) on the 0..255 scale (mean [3] or per-pixel [H, W, 3]); None for "none"."""
  if normalize == "none":
    return None
  if normalize == "imagenet":
    return np.asarray(IMAGENET_MEAN_RGB, np.float32), np.asarray(IMAGENET_STD_RGB, np.float32)
  if normalize == "imagenet_mean":
    return np.asarray(IMAGENET_MEAN_RGB, np.float32), None
  assert stats is not None
  if normalize == "per_channel":
    return np.asarray(stats.mean_rgb, np.float32), None
  if normalize == "per_channel_std":
    return np.asarray(stats.mean_rgb, np.float32), np.asarray(stats.std_rgb, np.float32)
  return np.asarray(stats.mean_image, np.float32), None


def _normalize_op(normalize: str, stats: ImageStats | None) -> Op:
  arrays = _normalization_arrays(normalize, stats)
  return ops_lib.to_float() if arrays is None else ops_lib.normalize(*arrays)


def channel_normalization(dataset: str, *, normalize: str, data_dir: str | os.PathLike | None = None,
                          stats_split: str | None = None, on_bad_image: str = "raise"
                          ) -> tuple[tuple[float, float, float], tuple[float, float, float] | None]:
  """The per-channel (mean, std) that `normalize` subtracts and divides by (std None: none).

  For normalising somewhere else than in the pipeline (the train step, when
  the photometric distortions run on the accelerator); the same numbers the
  host pipeline uses. A per-pixel mean is refused (it would be a [H, W, 3]
  constant of the step).
  """
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  stats = _stats_if_needed(source, stats_split, normalize, {})
  arrays = _normalization_arrays(normalize, stats)
  if arrays is None:
    return (0.0, 0.0, 0.0), None
  mean, std = arrays
  if mean.shape != (3,):
    raise DataError(f"normalize={normalize!r} subtracts a per-pixel mean, which only the host "
                    "pipeline applies; with photometric='device' use per_channel, "
                    "per_channel_std, imagenet, imagenet_mean or none")
  as_tuple = lambda v: tuple(float(x) for x in v)  # noqa: E731
  return as_tuple(mean), None if std is None else as_tuple(std)


def _pca(augment_kwargs: dict[str, Any], stats: ImageStats | None):
  """pca_color: True (the dataset's own PCA) or "imagenet" (published constants)."""
  choice = augment_kwargs.get("pca_color", False)
  if choice is False or choice is None:
    return None
  if choice == "imagenet":
    return IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC
  if choice is True:
    return stats.pca
  raise DataError(f"pca_color must be True, False or 'imagenet', got {choice!r}")


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
