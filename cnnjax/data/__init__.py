"""Input pipelines: datasets -> host-local batches of NHWC images and int labels.

TensorFlow and tensorflow-datasets live here and nowhere else in cnnjax. The
first thing this package does is hide every GPU from TensorFlow, before any
op runs: the accelerators belong to JAX, and a TF runtime that grabbed GPU
memory (or initialised CUDA) would starve or crash the training process.

Public API:
  dataset_info(dataset, data_dir=None) -> DatasetInfo
  train_iterator(dataset, *, global_batch_size, ...) -> infinite iterator of batches
  eval_iterator(dataset, *, global_batch_size, ...)  -> finite, padded + masked
  device_input(dataset, *, augment, normalize, ...)  -> DeviceInput: the jitted steps' share
  channel_normalization(dataset, *, normalize, ...)   -> per-channel (mean, std)
  apply_eval_view(image, view, *, image_size, mean, std) -> one image as evaluation feeds it
"""

from cnnjax import _imports

_imports.require("train", "cnnjax.data", ("tensorflow", "tensorflow_datasets"))

from cnnjax.data import _tf_setup  # noqa: E402,F401  (must run before anything builds a TF op)
from cnnjax.data.augment import PRESETS as AUGMENT_PRESETS
from cnnjax.data.normalization import (NORMALIZATIONS, channel_normalization, device_input,
                                       resolve_device_preprocessing)
from cnnjax.data.pipeline import eval_iterator, train_iterator
from cnnjax.data.sources import DatasetInfo, dataset_info, resolve_data_dir
from cnnjax.data.stats import IMAGENET_MEAN_RGB, IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC, IMAGENET_STD_RGB
from cnnjax.data.views import VIEWS, apply_eval_view
from cnnjax.preprocessing.boundary import BOUNDARIES, HostBatch, resolve_boundary

__all__ = [
    "AUGMENT_PRESETS",
    "BOUNDARIES",
    "DatasetInfo",
    "HostBatch",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_PCA_STD",
    "IMAGENET_PCA_EIGVEC",
    "IMAGENET_STD_RGB",
    "NORMALIZATIONS",
    "VIEWS",
    "apply_eval_view",
    "channel_normalization",
    "dataset_info",
    "device_input",
    "eval_iterator",
    "resolve_boundary",
    "resolve_data_dir",
    "resolve_device_preprocessing",
    "train_iterator",
]
