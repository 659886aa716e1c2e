"""The embedded offline dataset: scikit-learn's handwritten digits as a tfds builder.

scikit-learn ships 1,797 8x8 grey-level digits (values 0..16) inside its
wheel, so this dataset needs no network. We upsample them to 32x32x3 uint8
with a bicubic filter (smooth strokes; the tiny 8x8 grid would otherwise
show as blocks) and scale 0..16 to 0..255. A stratified split fixed by a seed
(1,497 train / 300 test) makes every run see the same examples.

Being an ordinary tfds `GeneratorBasedBuilder`, it is prepared once into a
data_dir (tfds writes to a temporary directory and renames it, so a killed
preparation leaves nothing half-written) and then flows through exactly the
same reading, shuffling and augmentation code as CIFAR or ImageNet.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

IMAGE_SIZE = 32
NUM_TEST = 300
SPLIT_SEED = 0


def digits_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as uint8 [N, 32, 32, 3] images and int64 labels."""
  from PIL import Image
  from sklearn.datasets import load_digits

  bunch = load_digits()
  grey = bunch.images.astype(np.float64) * (255.0 / 16.0)
  upsampled = np.empty((len(grey), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
  for i, image in enumerate(grey):
    # PIL's float mode keeps full precision through the bicubic filter.
    big = Image.fromarray(image.astype(np.float32)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    upsampled[i] = np.clip(np.rint(np.asarray(big)), 0, 255).astype(np.uint8)
  rgb = np.repeat(upsampled[..., None], 3, axis=-1)
  return rgb, bunch.target.astype(np.int64)


def digits_split_indices() -> dict[str, np.ndarray]:
  """The fixed, stratified train/test split (sorted indices into the 1,797 digits)."""
  from sklearn.model_selection import train_test_split

  _, labels = _labels_only()
  train, test = train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, stratify=labels, random_state=SPLIT_SEED)
  return {"train": np.sort(train), "test": np.sort(test)}


def _labels_only() -> tuple[None, np.ndarray]:
  from sklearn.datasets import load_digits
  return None, load_digits().target.astype(np.int64)


class CnnjaxDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn handwritten digits, 32x32x3, 10 classes, 1,497 train / 300 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Bicubic 8->32 upsampling, seeded stratified 1497/300 split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is inside the scikit-learn wheel.
    return {name: self._generate_examples(indices)
            for name, indices in digits_split_indices().items()}

  def _generate_examples(self, indices):
    images, labels = digits_images_and_labels()
    for index in indices:
      yield int(index), {"image": images[index], "label": int(labels[index])}

