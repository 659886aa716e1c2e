"""The run's input options: config.input.max_resolution (bounded copy) and config.input.boundary."""

from __future__ import annotations

import os

import numpy as np
import pytest
from train_helpers import set_values

from cnnjax.errors import ConfigError
from cnnjax.train import config as config_lib
from cnnjax.train import inputs


def _config(**input_settings):
  """The base config with a length and these config.input settings (nested dicts)."""
  c = config_lib.defaults()
  c["run"]["num_steps"] = 1
  c["input"].update(input_settings)
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"max_resolution": 8}, r"input.max_resolution=8 .* >= 32"),
    ({"boundary": "dali", "max_resolution": 320}, r"0 with input.boundary='dali'"),
    ({"boundary": "torch"}, r"input.boundary"),
    ({"boundary": "on"}, r"input.boundary"),
])
def test_bad_input_options_are_refused_before_anything_runs(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(_config(**overrides))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> str:
  from data_helpers import smooth_image, write_image
  root = str(tmp_path_factory.mktemp("photos"))
  rng = np.random.default_rng(0)
  for i in range(12):
    write_image(os.path.join(root, "train", f"c{i % 3}", f"{i}.jpg"), smooth_image(rng, 120, 160),
                quality=90)
  return root


def _first_batch(config):
  settings = config_lib.validate(config)
  opened = inputs.open_inputs(settings.input, settings.eval, mesh=None, batch_size=4, seed=0,
                              image_size=settings.input.image_size)
  return next(iter(opened.train_batches(0)))


def test_max_resolution_trains_on_the_prepared_copy(photo_folder, tmp_path):
  c = _config(dataset=f"image_folder:{photo_folder}", data_dir=str(tmp_path), augment="inception",
              normalize="imagenet", image_size=32)
  original = _first_batch(c)
  bounded = _first_batch(_config(**dict(c["input"], max_resolution=64)))
  assert os.listdir(os.path.join(tmp_path, "cnnjax_bounded"))  # prepared beside the original
  assert bounded["image"].shape == original["image"].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(bounded["label"], original["label"])  # same order and draws
  assert not np.array_equal(bounded["image"], original["image"])  # from fewer pixels


def test_dali_pipeline_feeds_the_run(photo_folder, tmp_path):
  pytest.importorskip("nvidia.dali", reason="DALI is the optional [dali] extra")
  c = _config(dataset=f"image_folder:{photo_folder}", data_dir=str(tmp_path), augment="inception",
              normalize="imagenet", image_size=32, boundary="dali")
  config_lib.validate(c)
  batch = _first_batch(c)
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 32, 32, 3)
  assert batch["window"].shape == (4, 4) and set(np.unique(batch["label"])) <= {0, 1, 2}


# ----------------------------------------------------------------------------
# Boundary "canvas" (Inception): crops within the input go out unresized.


def _inception(folder, data_dir, **kwargs):
  import cnnjax.data
  return next(cnnjax.data.train_iterator(
      f"image_folder:{folder}", data_dir=str(data_dir), global_batch_size=12,
      augment="inception", image_size=48, normalize="imagenet", process_index=0,
      process_count=1, seed=4, **kwargs))


@pytest.mark.parametrize("max_resolution", [0, 64])
def test_device_resize_equals_the_host_bilinear_resize(photo_folder, tmp_path, max_resolution):
  """Same crops, same flips; pixels within the host's rounding to uint8 (0.5)."""
  import jax.numpy as jnp
  from cnnjax.preprocessing.device import resize_crops
  host = _inception(photo_folder, tmp_path, max_resolution=max_resolution, boundary="uint8",
                    augment_kwargs={"interpolations": ("bilinear",)})
  device = _inception(photo_folder, tmp_path, max_resolution=max_resolution, boundary="canvas")
  assert device["image"].shape == host["image"].shape == (12, 48, 48, 3)
  assert "window" not in device and device["crop"].shape == (12, 3)
  fits = (device["crop"][:, 0] < 48) | (device["crop"][:, 1] < 48)
  assert fits.any()  # some crops went out unresized (and, on the originals, some not)
  if max_resolution == 0:
    assert not fits.all()
  for row, (height, width, _) in enumerate(device["crop"]):  # zero beyond the crop
    assert not device["image"][row, height:].any() and not device["image"][row, :, width:].any()
  resized = np.asarray(resize_crops(jnp.asarray(device["image"]), jnp.asarray(device["crop"]), 48))
  np.testing.assert_allclose(resized, host["image"].astype(np.float32), atol=0.5 + 1e-3)
  np.testing.assert_array_equal(device["label"], host["label"])


def test_resize_crop_is_tf_bilinear_then_flip():
  import jax.numpy as jnp
  import tensorflow as tf
  from cnnjax.preprocessing.device import resize_crop
  rng = np.random.default_rng(0)
  canvas = np.zeros((40, 40, 3), np.uint8)
  for height, width, flipped in [(17, 33, 0), (40, 40, 1), (9, 40, 1), (40, 23, 0)]:
    canvas[:] = 0
    canvas[:height, :width] = rng.integers(0, 256, (height, width, 3))
    expected = tf.image.resize(canvas[:height, :width].astype(np.float32), (40, 40)).numpy()
    expected = expected[:, ::-1] if flipped else expected
    got = np.asarray(resize_crop(jnp.asarray(canvas), jnp.asarray([height, width, flipped]), 40))
    np.testing.assert_allclose(got, expected, atol=2e-3)


@pytest.mark.parametrize("kwargs, boundary, message", [
    ({"resize": "device"}, "canvas", r"does not take \['resize'\]"),
    ({"interpolations": ("bilinear", "area")}, "canvas", r"boundary 'canvas' resizes bilinearly"),
])
def test_device_resize_options_are_checked(photo_folder, tmp_path, kwargs, boundary, message):
  import cnnjax.data
  from cnnjax.errors import DataError
  with pytest.raises(DataError, match=message):
    next(cnnjax.data.train_iterator(
        f"image_folder:{photo_folder}", data_dir=str(tmp_path), global_batch_size=4,
        augment="inception", image_size=32, process_index=0, process_count=1,
        boundary=boundary, augment_kwargs=kwargs))


def test_a_run_trains_on_device_resized_crops(photo_folder, tmp_path):
  """Through the loop: the step gets "crop" and resizes; the state is finite."""
  import jax
  from cnnjax.train.loop import run
  config = _config(dataset=f"image_folder:{photo_folder}", data_dir=str(tmp_path / "data"),
                   augment="inception", normalize="imagenet", image_size=32, boundary="canvas",
                   eval_split="train", max_resolution=64)
  set_values(config, {"run.batch_size": 4, "run.num_steps": 3, "model.name": "cifar_resnet20",
                      "model.kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
                      "eval.num_batches": 1, "run.progress_bar": False})
  result = run(config, str(tmp_path / "run"))
  assert result["step"] == 3 and np.isfinite(result["eval"]["loss"])
  leaves = jax.tree_util.tree_leaves(result["variables"])
  assert leaves and all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)


def test_a_one_class_folder_is_refused_before_anything_compiles(tmp_path, monkeypatch):
  """It used to train, report top-1 100.00% and exit 0."""
  from data_helpers import smooth_image, write_image

  from cnnjax.errors import DataError
  from cnnjax.train import steps
  from cnnjax.train.loop import run
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for i in range(3):
      write_image(str(tmp_path / "one" / split / "cat" / f"{i}.jpg"), smooth_image(rng, 40, 40))
  monkeypatch.setattr(steps, "train_step", lambda *a, **k: pytest.fail("compiled a step"))
  config = _config(dataset=f"image_folder:{tmp_path / 'one'}", data_dir=str(tmp_path / "d"),
                   image_size=16)
  set_values(config, {"run.batch_size": 2, "model.name": "cifar_resnet20",
                      "run.progress_bar": False})
  with pytest.raises(DataError, match="has 1 class.*at least 2"):
    run(config, str(tmp_path / "run"))
