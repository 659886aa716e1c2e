"""Promise 5: bad input data is converted correctly or reported with its path; nothing silent.

An image folder mixing every colour mode a crawl produces (grey, grey
16-bit, CMYK, RGBA, grey+alpha, palette with transparency) with unreadable
files (zero bytes, truncated JPEG and PNG, random bytes, text named .jpg):
converted images must arrive as the right RGB colours; with the default
`on_bad_image="raise"` the run stops before compiling with a DataError
naming a bad file; with `on_bad_image="skip"` it trains and reports how many
files it left out. Labels outside the model's classes are errors that name
the example, not silently zero targets.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import cnnjax.data
from cnnjax.errors import CnnjaxError, ConfigError, DataError
from cnnjax.train import loop, run


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95, **kwargs)
  return buffer.getvalue()


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", **kwargs)
  return buffer.getvalue()


def _palette_with_transparency() -> Image.Image:
  image = Image.new("P", (20, 20), 0)
  image.putpalette([0, 0, 255] + [0, 0, 0] * 255)  # index 0: blue
  image.info["transparency"] = 1  # index 1 (unused here): transparent
  return image


# Convertible images: (file name, encoded bytes, the RGB colour they must become).
CONVERTIBLE = {
    "grey_png": ("grey.png", _png_bytes(Image.new("L", (20, 24), 100)), (100, 100, 100)),
    "grey_jpeg": ("grey.jpg", _jpeg_bytes(Image.new("L", (24, 20), 200)), (200, 200, 200)),
    "grey16_png": ("grey16.png", _png_bytes(Image.new("I;16", (20, 20), 65535)), (255, 255, 255)),
    "cmyk_jpeg": ("cmyk.jpg", _jpeg_bytes(Image.new("CMYK", (20, 20), (0, 255, 255, 0))),
                  (255, 0, 0)),
    "rgba_png": ("rgba.png", _png_bytes(Image.new("RGBA", (20, 20), (0, 255, 0, 255))),
                 (0, 255, 0)),
    "transparent_png": ("clear.png", _png_bytes(Image.new("RGBA", (20, 20), (0, 0, 0, 0))),
                        (255, 255, 255)),  # composited on white
    "grey_alpha_png": ("la.png", _png_bytes(Image.new("LA", (20, 20), (50, 255))), (50, 50, 50)),
    "palette_png": ("palette.png", _png_bytes(_palette_with_transparency()), (0, 0, 255)),
}
_GOOD_JPEG = _jpeg_bytes(Image.new("RGB", (32, 32), (10, 120, 230)))
_GOOD_PNG = _png_bytes(Image.new("RGB", (32, 32), (10, 120, 230)))
UNREADABLE = {
    "zero.jpg": b"",
    "truncated.jpg": _GOOD_JPEG[: len(_GOOD_JPEG) // 2],
    "truncated.png": _GOOD_PNG[: len(_GOOD_PNG) // 2],
    "random.png": np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    "text.jpg": b"this is not an image\n",
}


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _folder(root: str) -> str:
  """train/ and val/ with one class per convertible mode, unreadable files in train/."""
  for class_name, (file_name, data, _) in CONVERTIBLE.items():
    for split in ("train", "val"):
      _write(os.path.join(root, split, class_name, file_name), data)
      _write(os.path.join(root, split, class_name, "rgb.jpg"), _GOOD_JPEG)
  classes = sorted(CONVERTIBLE)
  for index, (file_name, data) in enumerate(sorted(UNREADABLE.items())):
    _write(os.path.join(root, "train", classes[index % len(classes)], file_name), data)
  return root


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  """(dataset name, data_dir) of one folder with every mode and every unreadable file.

  Prepared once with on_bad_image="skip" (by the first test that reads it);
  the unreadable files are all in train/, so val/ holds only good images.
  """
  root = _folder(str(tmp_path_factory.mktemp("mixed")))
  return f"image_folder:{root}", str(tmp_path_factory.mktemp("mixed_data"))


def test_colour_modes_arrive_as_the_right_rgb(mixed_folder):
  dataset, data_dir = mixed_folder
  info = cnnjax.data.dataset_info(dataset, data_dir=data_dir, on_bad_image="skip")
  assert info.skipped_images == len(UNREADABLE)
  seen = {}
  for batch in cnnjax.data.eval_iterator(dataset, data_dir=data_dir, split="val",
                                         global_batch_size=8, image_size=16, normalize="none",
                                         process_index=0, process_count=1, on_bad_image="skip"):
    for image, label, real in zip(batch["image"], batch["label"], batch["mask"]):
      if real:
        assert image.shape == (16, 16, 3)
        seen.setdefault(info.class_names[label], []).append(image.mean(axis=(0, 1)))
  for class_name, (file_name, _, colour) in CONVERTIBLE.items():
    means = seen[class_name]
    assert len(means) == 2, class_name  # the converted image and the RGB JPEG
    # One of the two is the converted file: within JPEG error of its colour.
    errors = [np.abs(m - np.asarray(colour, np.float32)).max() for m in means]
    assert min(errors) <= 6, (class_name, file_name, means, colour)


@pytest.fixture()
def bad_folder_config(mixed_folder, tiny_config):
  dataset, data_dir = mixed_folder
  # 10 outputs, as for digits: the compiled step is the one the other tests use.
  return lambda **extra: tiny_config(dataset=dataset, data_dir=data_dir, num_classes=10,
                                     eval_num_batches=1, **extra)


def test_unreadable_image_stops_the_run_before_compiling_and_names_the_file(
    bad_folder_config, tmp_path, monkeypatch):
  def no_compute(*args, **kwargs):
    raise AssertionError("compiled before reporting the unreadable image")
  monkeypatch.setattr(loop.setup, "create_state", no_compute)
  monkeypatch.setattr(loop.steps, "jit_for_mesh", no_compute)
  with pytest.raises(DataError) as info:
    run(bad_folder_config(), str(tmp_path / "w"))
  message = str(info.value)
  assert any(os.sep + name in message for name in UNREADABLE), message
  assert "on_bad_image" in message  # says how to skip instead


def test_unreadable_images_are_skipped_and_counted_when_asked(bad_folder_config, tmp_path,
                                                             capsys):
  summary = run(bad_folder_config(on_bad_image="skip"), str(tmp_path / "w"), stop_after_steps=1)
  assert summary["step"] == 1
  assert summary["skipped_images"] == len(UNREADABLE)
  out = capsys.readouterr().out
  assert f"skipped {len(UNREADABLE)} unreadable image" in out, out


def test_model_with_fewer_classes_than_the_labels_is_a_config_error(tiny_config, tmp_path,
                                                                  monkeypatch):
  def no_compute(*args, **kwargs):
    raise AssertionError("compiled before checking num_classes")
  monkeypatch.setattr(loop.setup, "create_state", no_compute)
  with pytest.raises(ConfigError, match=r"num_classes.*5.*10"):
    run(tiny_config(num_classes=5), str(tmp_path / "w"))


def test_label_outside_the_datasets_classes_names_the_example(tiny_config, tmp_path):
  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    labels = np.arange(64) % 10
    labels[37] = 12
    return tf.data.Dataset.from_tensor_slices({
        "image": np.zeros((64, 32, 32, 3), np.uint8), "label": labels.astype(np.int64)})

  config = tiny_config(dataset="cifar10", data_dir=str(tmp_path / "data"), normalize="none",
                       batch_size=64)
  with tfds.testing.mock_data(num_examples=64, as_dataset_fn=as_dataset):
    with pytest.raises(CnnjaxError, match=r"label 12 is outside \[0, 10\) at .*example"):
      run(config, str(tmp_path / "w"))


@pytest.mark.parametrize("dataset", ["image_folder:", "image_folder: "])
def test_image_folder_without_a_path_is_an_error_not_the_working_directory(dataset, tmp_path):
  with pytest.raises(DataError, match="needs a path"):
    cnnjax.data.dataset_info(dataset, data_dir=str(tmp_path))
