"""Training-set statistics: mean (per channel, per pixel), std and RGB PCA.

AlexNet subtracts the per-pixel mean image of the training set and adds PCA
colour noise built from the eigenvectors of the training set's RGB
covariance; later papers subtract a per-channel mean. All of these come out
of one pass over the training split, done once and cached beside the data
(`<data_dir>/cnnjax_stats/<dataset>/<version>/`), written atomically so that
a killed computation leaves no half-written file.

Images are measured at a fixed square resolution R: the dataset's own size
when all images share one square size (CIFAR: 32), else R = 256 (shorter side
resized to 256, centre 256x256 crop, as AlexNet prepared ImageNet).
Large training sets are measured on their first `max_examples` examples
(50,000 by default; tfds shuffles examples when it prepares a dataset, so
these are a random sample) — the mean of 50k ImageNet images is within a
fraction of a grey level of the full-set mean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys

import numpy as np
import tensorflow as tf

from cnnjax import logs
from cnnjax._atomic import write_atomic
from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.image_ops import center_crop_image, decode_image, resize_shorter_side_image
from cnnjax.errors import DataError
from cnnjax.preprocessing import imagenet


# ImageNet's colour constants (cnnjax.preprocessing.imagenet) as float32 arrays.
IMAGENET_MEAN_RGB = np.asarray(imagenet.IMAGENET_MEAN_RGB, np.float32)
IMAGENET_STD_RGB = np.asarray(imagenet.IMAGENET_STD_RGB, np.float32)
IMAGENET_PCA_STD = np.asarray(imagenet.IMAGENET_PCA_STD, np.float32)
IMAGENET_PCA_EIGVEC = np.asarray(imagenet.IMAGENET_PCA_EIGVEC, np.float32)

DEFAULT_MAX_EXAMPLES = 50_000
VARIABLE_SIZE_RESOLUTION = 256


@dataclasses.dataclass(frozen=True)
class ImageStats:
  """Statistics of a training split on the 0..255 scale."""
  mean_rgb: np.ndarray       # [3]
  std_rgb: np.ndarray        # [3]  (over all pixels of all images)
  mean_image: np.ndarray     # [R, R, 3]
  covariance: np.ndarray     # [3, 3] RGB covariance over all pixels
  num_examples: int

  @property
  def pca(self) -> tuple[np.ndarray, np.ndarray]:
    """(std along each principal axis = sqrt of the covariance's eigenvalues, which are
    variances; eigenvectors as columns), largest first: what `pca_lighting` takes."""
    eigval, eigvec = np.linalg.eigh(self.covariance)
    order = np.argsort(eigval)[::-1]
    return (np.sqrt(np.maximum(eigval[order], 0.0)).astype(np.float32),
            eigvec[:, order].astype(np.float32))


def stats_resolution(image_shape) -> int:
  height, width = image_shape[0], image_shape[1]
  if height is not None and width is not None:
    return min(height, width)
  return VARIABLE_SIZE_RESOLUTION


@logs.quiet_libraries()
def compute_stats(dataset: tf.data.Dataset, resolution: int, max_examples: int | None,
                  batch_size: int = 64) -> ImageStats:
  """One pass over a dataset of {"image": encoded-or-array} examples (a bar on a terminal)."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  def prepare(example):
    image = decode_image(example["image"])
    if image.shape[0] != resolution or image.shape[1] != resolution:
      image = resize_shorter_side_image(image, resolution)
      image = center_crop_image(image, resolution, resolution, "statistics")
    return tf.cast(image, tf.float32)

  if max_examples is not None:
    dataset = dataset.take(max_examples)
  images = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  pixel_sum = np.zeros((resolution, resolution, 3), np.float64)
  outer = np.zeros((3, 3), np.float64)
  count = 0
  total = int(dataset.cardinality())
  print(f"computing the training set's statistics ({total if total >= 0 else 'all'} images at "
        f"{resolution}x{resolution}, once; cached for later runs) ...", flush=True)
  bar = tqdm(total=total if total >= 0 else None, unit="image", desc="statistics",
             disable=not logs.progress_bars_shown(sys.stdout), file=sys.stdout, leave=False)
  for batch in images.as_numpy_iterator():
    bar.update(len(batch))
    batch = batch.astype(np.float64)
    pixel_sum += batch.sum(axis=0)
    flat = batch.reshape(-1, 3)
    outer += flat.T @ flat
    count += len(batch)
  bar.close()
  if count == 0:
    raise DataError("cannot compute training-set statistics of an empty split")
  mean_image = pixel_sum / count
  mean_rgb = mean_image.mean(axis=(0, 1))
  num_pixels = count * resolution * resolution
  covariance = outer / num_pixels - np.outer(mean_rgb, mean_rgb)
  return ImageStats(mean_rgb=mean_rgb.astype(np.float32),
                    std_rgb=np.sqrt(np.diag(covariance)).astype(np.float32),
                    mean_image=mean_image.astype(np.float32),
                    covariance=covariance,
                    num_examples=count)


class _Stale(Exception):
  """A statistics cache computed from another state of its source."""


def stats_path(data_dir: str, dataset_id: str, split: str, resolution: int,
               max_examples: int | None, source_fingerprint: str) -> str:
  """Where the statistics of a split live: keyed by the source's identity, not its name."""
  safe_split = split.replace("/", "_").replace("[", "_").replace("]", "").replace(":", "-")
  safe_split = safe_split.replace("%", "pc")
  key = f"{safe_split}_r{resolution}_n{max_examples or 'all'}_{source_fingerprint}"
  if len(key) > 100:
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(data_dir, "cnnjax_stats", dataset_id, key + ".npz")


def load_or_compute_stats(path: str, compute, source_identity: dict) -> ImageStats:
  """Reads the cached statistics at `path`, or computes and caches them atomically.

  A cache that records another source identity than `source_identity` (or
  none) is computed anew and replaced.
  """
  if os.path.exists(path):
    try:
      with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("source_identity") != source_identity:
          raise _Stale
        return ImageStats(mean_rgb=data["mean_rgb"], std_rgb=data["std_rgb"],
                          mean_image=data["mean_image"], covariance=data["covariance"],
                          num_examples=int(meta["num_examples"]))
    except _Stale:
      pass
    except Exception as error:  # noqa: BLE001
      raise DataError(f"the cached statistics file {path} is unreadable ({error}); "
                      "delete it and it will be recomputed") from error
  stats = compute()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, mean_rgb=stats.mean_rgb, std_rgb=stats.std_rgb, mean_image=stats.mean_image,
           covariance=stats.covariance,
           meta=np.array(json.dumps({"num_examples": stats.num_examples,
                                     "source_identity": source_identity})))
  write_atomic(path, buffer.getvalue())
  return stats
