"""Input pipelines: datasets -> host-local batches of NHWC images and int labels.

TensorFlow and tensorflow-datasets live here and nowhere else in cnnjax. The
first thing this package does is hide every GPU from TensorFlow, before any
op runs: the accelerators belong to JAX, and a TF runtime that grabbed GPU
memory (or initialised CUDA) would starve or crash the training process.

Public API:
  dataset_info(dataset, data_dir=None) -> DatasetInfo
  train_iterator(dataset, *, global_batch_size, ...) -> infinite iterator of batches
  eval_iterator(dataset, *, global_batch_size, ...)  -> finite, padded + masked
  channel_normalization(dataset, *, normalize, ...)   -> (mean, std) for the train step
"""

from cnnjax.data import _tf_setup  # noqa: F401  (must run before anything builds a TF op)
from cnnjax.data.augment import PRESETS as AUGMENT_PRESETS
from cnnjax.data.pipeline import channel_normalization, eval_iterator, train_iterator
from cnnjax.data.sources import DatasetInfo, dataset_info, resolve_data_dir
from cnnjax.data.stats import IMAGENET_MEAN_RGB, IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC, IMAGENET_STD_RGB
from cnnjax.data.views import VIEWS

__all__ = [
    "AUGMENT_PRESETS",
    "DatasetInfo",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_PCA_STD",
    "IMAGENET_PCA_EIGVEC",
    "IMAGENET_STD_RGB",
    "VIEWS",
    "channel_normalization",
    "dataset_info",
    "eval_iterator",
    "resolve_data_dir",
    "train_iterator",
]
