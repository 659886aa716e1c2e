"""Dataset resolution: digits, tfds names (mocked), image folders, and the errors for bad input."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import cnnjax.data
from cnnjax.data import image_folder, sources
from cnnjax.errors import DataError
from data_helpers import smooth_image, write_image


def _listing(root: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------
# The embedded digits dataset.


def test_digits_info_split_and_balance(digits_dir):
  info = cnnjax.data.dataset_info("digits", data_dir=digits_dir)
  assert (info.num_classes, info.train_split, info.eval_split) == (10, "train", "test")
  assert (info.num_train_examples, info.num_eval_examples) == (1497, 300)
  assert info.image_shape == (32, 32, 3)
  from cnnjax.data.digits import digits_split_indices
  indices = digits_split_indices()
  assert not set(indices["train"]) & set(indices["test"])
  assert len(set(indices["train"]) | set(indices["test"])) == 1797
  from sklearn.datasets import load_digits
  labels = load_digits().target
  test_counts = np.bincount(labels[indices["test"]], minlength=10)
  assert test_counts.min() >= 29 and test_counts.max() <= 31  # stratified: 300 / 10 classes


def test_digits_images_are_upsampled_sklearn_digits(digits_dir):
  from cnnjax.data.digits import digits_images_and_labels, digits_split_indices
  images, labels = digits_images_and_labels()
  assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
  assert images.max() == 255 and images.min() == 0
  # Upsampling preserves the coarse picture: block-averaging back to 8x8
  # matches the original 0..16 digit scaled to 0..255.
  from sklearn.datasets import load_digits
  original = load_digits().images[0] * (255 / 16)
  pooled = images[0, :, :, 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
  assert np.abs(pooled - original).mean() < 20
  source = sources.get_source("digits", digits_dir)
  first = next(iter(source.read("test").take(1)))
  import tensorflow as tf
  decoded = tf.io.decode_png(first["image"]).numpy()
  position = [i for i in digits_split_indices()["test"] if np.array_equal(images[i], decoded)]
  assert position and labels[position[0]] == int(first["label"])


# ----------------------------------------------------------------------------
# tfds names.


def test_unknown_dataset_name_suggests_close_matches(tmp_path):
  with pytest.raises(DataError, match="cifar10"):
    cnnjax.data.dataset_info("cifar_10", data_dir=str(tmp_path))
  assert not os.listdir(tmp_path)


def test_mocked_tfds_datasets(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=6):
    info = cnnjax.data.dataset_info("cifar100", data_dir=str(tmp_path))
    assert info.num_classes == 100 and info.image_shape == (32, 32, 3)
    info = cnnjax.data.dataset_info("imagenette", data_dir=str(tmp_path))
    assert info.num_classes == 10 and info.image_shape == (None, None, 3)
    assert info.eval_split == "validation"


def test_dataset_without_image_or_label_feature(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(DataError, match="no image feature"):
      cnnjax.data.dataset_info("imdb_reviews", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no label feature"):
      cnnjax.data.dataset_info("celeb_a", data_dir=str(tmp_path))


def test_imagenet_without_archives_names_directory_files_and_command(tmp_path):
  with pytest.raises(DataError) as raised:
    cnnjax.data.dataset_info("imagenet2012", data_dir=str(tmp_path))
  message = str(raised.value)
  assert os.path.join(str(tmp_path), "downloads", "manual") in message
  assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
  assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
  assert not _listing(str(tmp_path))


def test_failed_download_never_substitutes_a_dataset(tmp_path, monkeypatch):
  real_builder = sources._tfds_builder

  def offline_builder(name, root):
    builder = real_builder(name, root)

    def no_network(*args, **kwargs):
      raise ConnectionError("network is unreachable")
    builder.download_and_prepare = no_network
    return builder

  monkeypatch.setattr(sources, "_tfds_builder", offline_builder)
  with pytest.raises(DataError, match="No other dataset is used in its place"):
    cnnjax.data.dataset_info("cifar10", data_dir=str(tmp_path))
  assert not _listing(str(tmp_path))


# ----------------------------------------------------------------------------
# Image folders.


def test_image_folder_with_split_folders(folder_with_splits, tmp_path):
  info = cnnjax.data.dataset_info("image_folder:" + folder_with_splits, data_dir=str(tmp_path))
  assert info.class_names == ("ant", "bee", "cat")
  assert (info.train_split, info.eval_split) == ("train", "val")
  assert (info.num_train_examples, info.num_eval_examples) == (15, 9)
  assert info.image_shape == (None, None, 3) and info.skipped_images == 0


def test_image_folder_without_split_folders_is_split_by_path_hash(tmp_path):
  rng = np.random.default_rng(1)
  for class_name in ("a", "b"):
    for i in range(20):
      write_image(str(tmp_path / "images" / class_name / f"{i}.png"), smooth_image(rng, 8, 8))
  layout = image_folder.scan_folder(str(tmp_path / "images"))
  assert set(layout.splits) == {"train", "val"}
  assert sum(len(v) for v in layout.splits.values()) == 40
  again = image_folder.scan_folder(str(tmp_path / "images"))
  assert again.splits == layout.splits


def test_image_folder_converts_grey_cmyk_and_rgba_to_rgb(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(2)
  grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
  write_image(str(tmp_path / "grey.png"), grey)
  rgba = rng.integers(0, 256, (12, 10, 4), dtype=np.uint8)
  rgba[..., 3] = 0  # fully transparent -> white
  rgba[0, 0, 3] = 255  # one opaque pixel keeps its colour
  write_image(str(tmp_path / "rgba.png"), rgba)
  cmyk = Image.new("CMYK", (10, 12), (0, 255, 255, 0))  # pure red in CMYK
  cmyk.save(tmp_path / "cmyk.jpg", quality=100)
  write_image(str(tmp_path / "p16.png"), (grey.astype(np.uint16) * 257))

  def load(name):
    return np.asarray(Image.open(io.BytesIO(image_folder.load_as_rgb_bytes(str(tmp_path / name)))))

  assert np.array_equal(load("grey.png"), np.repeat(grey[..., None], 3, axis=-1))
  converted = load("rgba.png")
  assert np.array_equal(converted[0, 0], rgba[0, 0, :3])
  assert np.all(converted.reshape(-1, 3)[1:] == 255)
  red = load("cmyk.jpg").reshape(-1, 3).mean(axis=0)
  assert red[0] > 240 and red[1] < 15 and red[2] < 15
  assert np.abs(load("p16.png")[..., 0].astype(int) - grey).max() <= 1


@pytest.mark.parametrize("bad_bytes, label", [(b"", "zero-byte"), (b"not an image at all", "garbage"),
                                              (None, "truncated")])
def test_bad_image_raises_naming_the_file_and_leaves_nothing(tmp_path, bad_bytes, label):
  rng = np.random.default_rng(3)
  root = tmp_path / "images"
  for i in range(2):
    write_image(str(root / "train" / "x" / f"{i}.jpg"), smooth_image(rng, 64, 64))
  bad = root / "train" / "x" / "bad.jpg"
  if bad_bytes is None:
    good = (root / "train" / "x" / "0.jpg").read_bytes()
    bad_bytes = good[:len(good) // 2]
  bad.write_bytes(bad_bytes)
  data_dir = tmp_path / "data"
  with pytest.raises(DataError, match=str(bad)):
    cnnjax.data.dataset_info("image_folder:" + str(root), data_dir=str(data_dir))
  assert not _listing(str(data_dir)) and not os.path.exists(data_dir), label
  info = cnnjax.data.dataset_info("image_folder:" + str(root), data_dir=str(data_dir),
                                  on_bad_image="skip")
  assert info.skipped_images == 1 and info.num_train_examples == 2


def test_image_folder_layout_errors_name_the_path(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match=f"{empty} has no class sub-folders"):
    cnnjax.data.dataset_info(f"image_folder:{empty}", data_dir=str(tmp_path / "d"))
  no_class = tmp_path / "noclass"
  (no_class / "train").mkdir(parents=True)
  with pytest.raises(DataError, match=f"{no_class / 'train'} has no class sub-folders"):
    cnnjax.data.dataset_info(f"image_folder:{no_class}", data_dir=str(tmp_path / "d"))
  rng = np.random.default_rng(4)
  write_image(str(tmp_path / "oneempty" / "full" / "0.png"), smooth_image(rng, 8, 8))
  (tmp_path / "oneempty" / "hollow").mkdir()
  with pytest.raises(DataError, match=f"class folder {tmp_path / 'oneempty' / 'hollow'} has no images"):
    cnnjax.data.dataset_info(f"image_folder:{tmp_path / 'oneempty'}", data_dir=str(tmp_path / "d"))
  with pytest.raises(DataError, match="does not exist"):
    cnnjax.data.dataset_info(f"image_folder:{tmp_path / 'missing'}", data_dir=str(tmp_path / "d"))
  with pytest.raises(DataError, match="on_bad_image"):
    cnnjax.data.dataset_info(f"image_folder:{tmp_path / 'oneempty'}", on_bad_image="ignore")
  assert not os.path.exists(tmp_path / "d")


def _png16(path, values, significant_bits=None):
  """A 16-bit greyscale PNG of `values`, with an sBIT chunk when significant_bits is given."""
  import struct
  import zlib
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
  data = buffer.getvalue()
  if significant_bits is not None:
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([significant_bits])
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + bytes([significant_bits])))
    data = data[:33] + chunk + data[33:]  # after the 8-byte signature and the IHDR chunk
  path.write_bytes(data)


@pytest.mark.parametrize("peak, expected", [(255, 1), (256, 1), (65535, 255)])
def test_16_bit_images_are_scaled_by_their_depth_not_their_content(tmp_path, peak, expected):
  """Old code: a maximum of 255 was taken for 8-bit data (stored bright), 256 for 16-bit."""
  from PIL import Image
  values = np.zeros((4, 6)) + peak
  values[0, 0] = 0
  _png16(tmp_path / "p.png", values)
  stored = np.asarray(Image.open(io.BytesIO(image_folder.load_as_rgb_bytes(str(tmp_path / "p.png")))))
  assert stored[0, 0].tolist() == [0, 0, 0]
  assert stored[1, 1].tolist() == [expected] * 3


def test_16_bit_png_with_significant_bits_uses_them(tmp_path):
  from PIL import Image
  values = np.array([[0, 4095 << 4, 2048 << 4, 15]])  # 12 significant bits, shifted up
  _png16(tmp_path / "s.png", values, significant_bits=12)
  assert image_folder.png_significant_bits((tmp_path / "s.png").read_bytes()) == 12
  stored = np.asarray(Image.open(io.BytesIO(image_folder.load_as_rgb_bytes(str(tmp_path / "s.png")))))
  assert stored[0, :, 0].tolist() == [0, 255, round(2048 * 255 / 4095), 0]


def test_a_training_set_of_one_class_is_refused(tmp_path):
  rng = np.random.default_rng(8)
  for i in range(3):
    write_image(str(tmp_path / "one" / "train" / "only" / f"{i}.jpg"), smooth_image(rng, 40, 40))
    write_image(str(tmp_path / "one" / "val" / "only" / f"{i}.jpg"), smooth_image(rng, 40, 40))
  with pytest.raises(DataError, match="has 1 class.*at least 2"):
    next(cnnjax.data.train_iterator(f"image_folder:{tmp_path / 'one'}", global_batch_size=2,
                                    data_dir=str(tmp_path / "data"), image_size=16))
