"""Where the training-set statistics meet the images: normalisation and the device's share.

`normalize` names (NORMALIZATIONS) -> the mean/std the host ops subtract, or
the `DeviceInput` (cnnjax.preprocessing.device) that does the same, plus the
colour augmentations, in the jitted step on uint8 batches. Both come from
the same statistics (`dataset_stats`, cached beside the data).

Where the host stops is `boundary` (`cnnjax.preprocessing.boundary`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data import augment as ops_lib
from cnnjax.data.augment import Op
from cnnjax.data.sources import Source, get_source
from cnnjax.data.stats import (DEFAULT_MAX_EXAMPLES, IMAGENET_MEAN_RGB, IMAGENET_PCA_EIGVEC,
                               IMAGENET_PCA_STD, IMAGENET_STD_RGB, ImageStats, compute_stats,
                               load_or_compute_stats, stats_path, stats_resolution)
from cnnjax.errors import DataError, close_matches
from cnnjax.preprocessing import presets
from cnnjax.preprocessing.imagenet import CAFFE_MEAN_RGB
from cnnjax.preprocessing.boundary import device_finishes, resolve_boundary

NORMALIZATIONS = ("per_channel", "per_channel_std", "per_pixel", "imagenet", "imagenet_mean",
                  "caffe_mean", "none")
# The VGG and ResNet authors' Caffe ImageNet mean (RGB order, 0..255), which
# their published weights (keras.applications' "caffe" mode) expect subtracted.


def resolve_device_preprocessing(boundary: str = "auto") -> bool:
  """Whether batches cross as uint8 (the step finishes them) under `boundary`."""
  return device_finishes(resolve_boundary(boundary, error=DataError))


def device_input(dataset: str, *, augment: str = "none", augment_kwargs: dict[str, Any] | None = None,
                 normalize: str = "per_channel", data_dir: str | os.PathLike | None = None,
                 on_bad_image: str = "raise", stats_split: str | None = None,
                 image_size: int | None = None, boundary: str = "auto"):
  """The `DeviceInput` that finishes train_iterator/eval_iterator's uint8 batches.

  Takes the iterators' arguments and uses the same statistics. Its train()
  applies the preset's photometric distortions (Inception) and PCA lighting
  (pca_color), then the normalisation; its eval() the normalisation. A
  float batch (boundary "float32") passes through it unchanged.
  image_size: the network input side; needed at boundary "canvas", whose
  crops the step resizes.
  """
  from cnnjax.preprocessing.device import (DeviceInput, PcaLighting,  # pylint: disable=import-outside-toplevel
                                         Photometric)
  augment_kwargs = dict(augment_kwargs or {})
  options = presets.check_options(augment, augment_kwargs, image_size or 0, error=DataError)
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  stats = stats_if_needed(source, stats_split, normalize, augment_kwargs)
  arrays = normalization_arrays(normalize, stats)
  mean, std = arrays if arrays is not None else (np.zeros(3, np.float32), None)
  boundary = resolve_boundary(boundary, error=DataError)
  on_device = [op for op in presets.PRESETS[augment].ops  # the declaration's device ops, in order
               if presets.OPS[op].on_device("uint8" if boundary == "float32" else boundary)]
  parts: dict[str, Any] = {"mean": mean, "std": std, "ops": tuple(on_device)}
  if "random_resize" in on_device:  # boundary "canvas": the step resizes (and mirrors) the crop
    ops_lib.check_canvas(augment, augment_kwargs)
    if image_size is None:
      raise DataError("boundary 'canvas' needs the network input side (image_size)")
    parts["resize"] = int(image_size)
  if "photometric" in on_device:
    strengths = ops_lib.photometric_strengths(augment, options)
    parts["photometric"] = None if strengths is None else Photometric(**strengths)
  pca = pca_for(augment_kwargs, stats) if "pca_lighting" in on_device else None
  if pca is not None:
    parts["pca"] = PcaLighting(tuple(float(v) for v in np.reshape(pca[0], 3)),
                               tuple(tuple(float(v) for v in row) for row in np.reshape(pca[1], (3, 3))),
                               float(options["pca_alpha_std"]))
  return DeviceInput(**parts)


def stats_if_needed(source: Source, stats_split: str | None, normalize: str,
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
  path = stats_path(source.data_dir, dataset_id, split, resolution, max_examples,
                    source.fingerprint)
  return load_or_compute_stats(
      path, lambda: compute_stats(source.read(split), resolution, max_examples), source.identity)


def normalization_arrays(normalize: str, stats: ImageStats | None
                         ) -> tuple[np.ndarray, np.ndarray | None] | None:
  """(mean, std) on the 0..255 scale (mean [3] or per-pixel [H, W, 3]); None for "none"."""
  if normalize == "none":
    return None
  if normalize == "imagenet":
    return np.asarray(IMAGENET_MEAN_RGB, np.float32), np.asarray(IMAGENET_STD_RGB, np.float32)
  if normalize == "imagenet_mean":
    return np.asarray(IMAGENET_MEAN_RGB, np.float32), None
  if normalize == "caffe_mean":
    return np.asarray(CAFFE_MEAN_RGB, np.float32), None
  assert stats is not None
  if normalize == "per_channel":
    return np.asarray(stats.mean_rgb, np.float32), None
  if normalize == "per_channel_std":
    return np.asarray(stats.mean_rgb, np.float32), np.asarray(stats.std_rgb, np.float32)
  return np.asarray(stats.mean_image, np.float32), None


def normalize_op(normalize: str, stats: ImageStats | None) -> Op:
  arrays = normalization_arrays(normalize, stats)
  return ops_lib.to_float() if arrays is None else ops_lib.normalize(*arrays)


def channel_normalization(dataset: str, *, normalize: str, data_dir: str | os.PathLike | None = None,
                          stats_split: str | None = None, on_bad_image: str = "raise"
                          ) -> tuple[tuple[float, float, float], tuple[float, float, float] | None]:
  """The per-channel (mean, std) that `normalize` subtracts and divides by (std None: none).

  The same numbers the host pipeline uses, for code that normalises
  elsewhere; a per-pixel mean is refused (`device_input` handles it).
  """
  source = get_source(dataset, data_dir, on_bad_image=on_bad_image)
  stats = stats_if_needed(source, stats_split, normalize, {})
  arrays = normalization_arrays(normalize, stats)
  if arrays is None:
    return (0.0, 0.0, 0.0), None
  mean, std = arrays
  if mean.shape != (3,):
    raise DataError(f"normalize={normalize!r} subtracts a per-pixel mean, not a per-channel one; "
                    "cnnjax.data.device_input(...) gives the object that subtracts it on the device")
  as_tuple = lambda v: tuple(float(x) for x in v)  # noqa: E731
  return as_tuple(mean), None if std is None else as_tuple(std)


def pca_for(augment_kwargs: dict[str, Any], stats: ImageStats | None):
  """pca_color (checked by `presets.check_options`): True (the dataset's own PCA) or
  "imagenet" (published constants)."""
  choice = augment_kwargs.get("pca_color", False)
  if choice is False or choice is None:
    return None
  return (IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC) if choice == "imagenet" else stats.pca
