"""train_iterator / eval_iterator: determinism, exact resume, process shares, padding, errors."""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import cnnjax.data
from cnnjax.errors import DataError


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def _fingerprints(images: np.ndarray) -> list[str]:
  return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]


def test_same_seed_same_batches_and_exact_resume_across_epochs(digits_dir):
  # 1497 training examples, 700 per batch: batch 2 spans the first epoch boundary.
  kwargs = dict(data_dir=digits_dir, global_batch_size=700, augment="cifar",
                process_index=0, process_count=1)
  fresh = _take(cnnjax.data.train_iterator("digits", seed=7, **kwargs), 3)
  resumed = _take(cnnjax.data.train_iterator("digits", seed=7, start_step=1, **kwargs), 2)
  other_seed = _take(cnnjax.data.train_iterator("digits", seed=8, **kwargs), 1)
  for a, b in zip(fresh[1:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(fresh[0]["label"], other_seed[0]["label"])
  assert fresh[0]["image"].shape == (700, 32, 32, 3) and fresh[0]["image"].dtype == np.float32
  assert fresh[0]["label"].dtype == np.int32
  # The first epoch (1497 examples) is a permutation of the training split.
  first_epoch = np.concatenate([b["label"] for b in fresh])[:1497]
  assert np.array_equal(np.bincount(first_epoch, minlength=10),
                        np.bincount(np.concatenate(
                            [b["label"] for b in cnnjax.data.eval_iterator(
                                "digits", data_dir=digits_dir, split="train", global_batch_size=1497,
                                normalize="none", process_index=0, process_count=1)]), minlength=10))


def test_batch_size_one_visits_each_example_once_per_epoch_in_a_new_order(folder_with_splits,
                                                                           tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("folder_data"))
  stream = cnnjax.data.train_iterator(f"image_folder:{folder_with_splits}", data_dir=data_dir,
                                      global_batch_size=1, image_size=32, normalize="none",
                                      process_index=0, process_count=1)
  batches = _take(stream, 30)
  assert all(b["image"].shape == (1, 32, 32, 3) for b in batches)
  prints = [_fingerprints(b["image"])[0] for b in batches]
  first, second = prints[:15], prints[15:]
  assert len(set(first)) == 15 and set(first) == set(second)
  assert first != second


def test_two_processes_read_disjoint_shares_whose_union_is_the_split(folder_with_splits,
                                                                      tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("folder_data_2p"))
  name = f"image_folder:{folder_with_splits}"
  shares = []
  for index in (0, 1):
    stream = cnnjax.data.train_iterator(name, data_dir=data_dir, global_batch_size=2, image_size=32,
                                        normalize="none", process_index=index, process_count=2)
    size = 8 if index == 0 else 7
    shares.append({_fingerprints(b["image"])[0] for b in _take(stream, size)})
  everything = cnnjax.data.train_iterator(name, data_dir=data_dir, global_batch_size=15,
                                          image_size=32, normalize="none",
                                          process_index=0, process_count=1)
  assert len(shares[0]) == 8 and len(shares[1]) == 7
  assert not shares[0] & shares[1]
  assert shares[0] | shares[1] == set(_fingerprints(next(everything)["image"]))


def test_eval_counts_every_example_once_with_padding_and_processes(digits_dir):
  kwargs = dict(data_dir=digits_dir, normalize="none")
  single = list(cnnjax.data.eval_iterator("digits", global_batch_size=64, process_index=0,
                                          process_count=1, **kwargs))
  assert len(single) == 5 and [int(b["mask"].sum()) for b in single] == [64, 64, 64, 64, 44]
  assert not single[-1]["image"][44:].any() and single[-1]["mask"].dtype == bool
  real = np.concatenate([b["image"][b["mask"]] for b in single])
  assert len(set(_fingerprints(real))) == 300
  labels = np.concatenate([b["label"][b["mask"]] for b in single])
  per_process = [list(cnnjax.data.eval_iterator("digits", global_batch_size=64, process_index=p,
                                                process_count=2, **kwargs)) for p in (0, 1)]
  assert [len(batches) for batches in per_process] == [5, 5]  # ceil(150 / 32), the same for both
  seen = [set(_fingerprints(np.concatenate([b["image"][b["mask"]] for b in batches])))
          for batches in per_process]
  assert len(seen[0]) == len(seen[1]) == 150 and not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(_fingerprints(real))
  assert np.bincount(labels, minlength=10).min() >= 29


def test_channel_normalization_gives_the_pipeline_constants(digits_dir):
  raw = next(cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=64,
                                        normalize="none", process_index=0, process_count=1))
  normalised = next(cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=64,
                                               normalize="per_channel_std", process_index=0,
                                               process_count=1))
  mean, std = cnnjax.data.channel_normalization("digits", normalize="per_channel_std",
                                                data_dir=digits_dir)
  np.testing.assert_allclose((raw["image"] - np.array(mean)) / np.array(std), normalised["image"],
                             rtol=1e-5, atol=1e-4)
  assert cnnjax.data.channel_normalization("digits", normalize="imagenet", data_dir=digits_dir) == (
      tuple(cnnjax.data.IMAGENET_MEAN_RGB), tuple(cnnjax.data.IMAGENET_STD_RGB))
  assert cnnjax.data.channel_normalization("digits", normalize="none",
                                           data_dir=digits_dir) == ((0.0, 0.0, 0.0), None)
  with pytest.raises(DataError, match="per-pixel mean"):
    cnnjax.data.channel_normalization("digits", normalize="per_pixel", data_dir=digits_dir)


def test_per_channel_normalisation_centres_the_training_set(digits_dir):
  batch = next(cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=1497,
                                          process_index=0, process_count=1))
  np.testing.assert_allclose(batch["image"].mean(axis=(0, 1, 2)), 0.0, atol=0.05)
  std = next(cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=1497,
                                        normalize="per_channel_std", process_index=0,
                                        process_count=1))
  np.testing.assert_allclose(std["image"].std(axis=(0, 1, 2)), 1.0, atol=0.01)
  pixel = next(cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=1497,
                                          normalize="per_pixel", process_index=0, process_count=1))
  np.testing.assert_allclose(pixel["image"].mean(axis=0), 0.0, atol=0.05)
  cached = [os.path.relpath(os.path.join(d, f), digits_dir)
            for d, _, files in os.walk(os.path.join(digits_dir, "cnnjax_stats")) for f in files]
  assert len(cached) == 1 and cached[0].endswith(".npz")  # written once, no temporary left


def test_mocked_cifar10_and_imagenet_presets_and_views(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    batch = next(cnnjax.data.train_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=4,
                                            augment="cifar", process_index=0, process_count=1))
    assert batch["image"].shape == (4, 32, 32, 3)
    evaluation = list(cnnjax.data.eval_iterator("cifar10", data_dir=str(tmp_path),
                                                global_batch_size=3, process_index=0,
                                                process_count=1))
    assert [int(b["mask"].sum()) for b in evaluation] == [3, 1]
    for augment, extra in [("inception", {}), ("alexnet", {"pca_color": True}),
                           ("scale_jitter", {"scale_min": 64, "scale_max": 96})]:
      batch = next(cnnjax.data.train_iterator(
          "imagenet2012", data_dir=str(tmp_path), global_batch_size=2, augment=augment,
          augment_kwargs=extra, image_size=56, process_index=0, process_count=1))
      assert batch["image"].shape == (2, 56, 56, 3), augment
      assert np.isfinite(batch["image"]).all()
    views = next(cnnjax.data.eval_iterator("imagenet2012", data_dir=str(tmp_path),
                                           global_batch_size=2, view="10crop", image_size=56,
                                           normalize="imagenet", process_index=0,
                                           process_count=1))
    assert views["image"].shape == (2, 10, 56, 56, 3)


def test_label_out_of_range_names_the_example(tmp_path):
  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices({
        "image": np.zeros((4, 32, 32, 3), np.uint8),
        "label": np.array([1, 2, 12, 3], np.int64),
        "id": np.array([b"a", b"b", b"c", b"d"]),
    })

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    stream = cnnjax.data.eval_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=4,
                                       normalize="none", process_index=0, process_count=1)
    expected = r"label 12 is outside \[0, 10\) at example \(position in process 0's share of 'test'\) 2$"
    with pytest.raises(DataError, match=expected):
      next(stream)


def test_argument_errors(digits_dir):
  with pytest.raises(DataError, match="multiple of the process count"):
    cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=3,
                               process_index=0, process_count=2)
  with pytest.raises(DataError, match="process_index"):
    cnnjax.data.eval_iterator("digits", data_dir=digits_dir, global_batch_size=4,
                              process_index=2, process_count=2)
  with pytest.raises(DataError, match="unknown normalize"):
    cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=4,
                               normalize="per_chanel", process_index=0, process_count=1)
  with pytest.raises(DataError, match="has no split 'tset'"):
    cnnjax.data.eval_iterator("digits", data_dir=digits_dir, split="tset", global_batch_size=4,
                              process_index=0, process_count=1)


def test_process_defaults_come_from_jax():
  from cnnjax._processes import resolve_process
  assert resolve_process(None, None) == (0, 1)


def test_sharded_dataset_reshuffles_file_order_per_epoch_and_resumes_exactly(folder_with_splits,
                                                                             tmp_path_factory):
  from cnnjax.data import sources
  from cnnjax.data.image_folder import image_folder_builder
  data_dir = str(tmp_path_factory.mktemp("folder_data_sharded"))
  image_folder_builder(folder_with_splits, data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=3))
  name = f"image_folder:{folder_with_splits}"
  assert len(sources.get_source(name, data_dir)._file_instructions("train")) == 3
  kwargs = dict(data_dir=data_dir, global_batch_size=5, image_size=32, normalize="none",
                process_index=0, process_count=1, seed=3)
  # No shuffle buffer: the order within an epoch comes from the shard order alone.
  fresh = _take(cnnjax.data.train_iterator(name, shuffle_buffer_size=1, **kwargs), 12)
  prints = [p for b in fresh for p in _fingerprints(b["image"])]
  epochs = [prints[i:i + 15] for i in range(0, 60, 15)]
  assert all(set(e) == set(epochs[0]) and len(set(e)) == 15 for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1
  resumed = _take(cnnjax.data.train_iterator(name, shuffle_buffer_size=1, start_step=7, **kwargs), 3)
  for a, b in zip(fresh[7:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
