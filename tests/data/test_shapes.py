"""The generated `shapes` dataset: determinism, balance, documented statistics, named errors."""

from __future__ import annotations

import numpy as np
import pytest

from cnnjax.data import shapes
from cnnjax.errors import DataError


@pytest.fixture(scope="module")
def train_set():
  return shapes.generate(1000, seed=0)


def test_same_seed_same_pixels_and_prefix_property(train_set):
  again = shapes.generate(1000, seed=0)
  np.testing.assert_array_equal(train_set.images, again.images)
  np.testing.assert_array_equal(train_set.labels, again.labels)
  prefix = shapes.generate(40, seed=0)
  np.testing.assert_array_equal(prefix.images, train_set.images[:40])


def test_seeds_and_splits_differ(train_set):
  other_seed = shapes.generate(40, seed=1)
  test_split = shapes.generate(40, seed=0, split="test")
  assert not np.array_equal(other_seed.images, train_set.images[:40])
  assert not np.array_equal(test_split.images, train_set.images[:40])


def test_exact_class_balance_and_shapes(train_set):
  assert train_set.images.shape == (1000, 32, 32, 3) and train_set.images.dtype == np.uint8
  assert train_set.labels.dtype == np.int64
  np.testing.assert_array_equal(np.bincount(train_set.labels, minlength=10), [100] * 10)
  assert len(shapes.CLASS_NAMES) == shapes.NUM_CLASSES == 10


def test_documented_statistics(train_set):
  """The figures docs/lessons.md states: scale range, pixel statistics, clutter everywhere."""
  low, high = shapes.SCALE_RANGE
  assert low <= train_set.scales.min() and train_set.scales.max() <= high
  assert train_set.scales.max() / train_set.scales.min() > 2.0  # a factor ~2.3 of scale
  pixels = train_set.images.reshape(-1, 3).astype(np.float64)
  assert 115 < pixels.mean() < 140 and 65 < pixels.std() < 85
  # no class is told apart by its mean brightness alone: class means within 10 levels
  means = [train_set.images[train_set.labels == c].mean() for c in range(10)]
  assert max(means) - min(means) < 10
  # every image has clutter: more than 8 distinct colours away from any object
  assert all(len(np.unique(image.reshape(-1, 3)[:, 0])) > 8 for image in train_set.images[:20])


def test_other_sizes():
  small = shapes.generate(12, image_size=20, seed=3, split="test")
  assert small.images.shape == (12, 20, 20, 3)
  assert shapes.generate(0).images.shape == (0, 32, 32, 3)


@pytest.mark.parametrize("kwargs, words", [
    ({"num_examples": -1}, "num_examples"),
    ({"num_examples": 4, "image_size": 8}, "image_size"),
    ({"num_examples": 4, "split": "validation"}, "split"),
    ({"num_examples": 4, "seed": 1.5}, "seed"),
])
def test_bad_arguments_are_named(kwargs, words):
  with pytest.raises(DataError, match=words):
    shapes.generate(**kwargs)


def test_names_parse_and_refuse():
  assert shapes.parse_name("shapes") == shapes.ShapesOptions()
  options = shapes.parse_name("shapes:train=500,size=40,seed=2")
  assert (options.train, options.test, options.size, options.seed) == (500, 2000, 40, 2)
  for bad, words in (("shapes:trian=5", "options are"), ("shapes:train=x", "integer"),
                     ("shapes:size=4", "size"), ("shapes:train=0", "train"),
                     ("shape", "not a shapes dataset")):
    with pytest.raises(DataError, match=words):
      shapes.parse_name(bad)


def test_dataset_name_prepares_a_tfds_dataset(tmp_path):
  import cnnjax.data
  name = "shapes:train=30,test=20,size=16,seed=4"
  info = cnnjax.data.dataset_info(name, data_dir=str(tmp_path))
  assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 30, 20)
  assert info.image_shape == (16, 16, 3) and info.class_names == shapes.CLASS_NAMES
  batch = next(iter(cnnjax.data.eval_iterator(name, data_dir=str(tmp_path), global_batch_size=20,
                                              normalize="none", boundary="float32")))
  expected = shapes.generate(20, split="test", image_size=16, seed=4)
  np.testing.assert_array_equal(np.sort(batch["label"]), np.sort(expected.labels))
  with pytest.raises(DataError, match="options are"):
    cnnjax.data.dataset_info("shapes:colour=1", data_dir=str(tmp_path))
