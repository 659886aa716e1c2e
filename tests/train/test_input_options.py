"""The run's input options: config.max_resolution (bounded copy) and config.input_pipeline (DALI)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cnnjax.configs import base
from cnnjax.errors import ConfigError
from cnnjax.train import config as config_lib
from cnnjax.train import inputs


def _config(**overrides):
  c = base.default_values()
  c.update(num_steps=1)
  c.update(overrides)
  return c


@pytest.mark.parametrize("overrides, message", [
    ({"max_resolution": 8}, r"max_resolution=8 .* >= 32"),
    ({"input_pipeline": "dali", "device_preprocessing": "off"}, r"DALI ships uint8"),
    ({"input_pipeline": "dali", "max_resolution": 320}, r"0 with input_pipeline='dali'"),
    ({"input_pipeline": "torch"}, r"input_pipeline"),
])
def test_bad_input_options_are_refused_before_anything_runs(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(_config(**overrides))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> str:
  from PIL import Image
  root = str(tmp_path_factory.mktemp("photos"))
  rng = np.random.default_rng(0)
  for i in range(12):
    folder = os.path.join(root, "train", f"c{i % 3}")
    os.makedirs(folder, exist_ok=True)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    coarse.resize((160, 120), Image.Resampling.BICUBIC).save(os.path.join(folder, f"{i}.jpg"),
                                                             quality=90)
  return root


def _first_batch(config):
  return next(iter(inputs.open_inputs(config, mesh=None).train_batches(0)))


def test_max_resolution_trains_on_the_prepared_copy(photo_folder, tmp_path):
  c = _config(dataset=f"image_folder:{photo_folder}", data_dir=str(tmp_path), augment="inception",
              normalize="imagenet", image_size=32, batch_size=4)
  original = _first_batch(c)
  bounded = _first_batch(dict(c, max_resolution=64))
  assert os.listdir(os.path.join(tmp_path, "cnnjax_bounded"))  # prepared beside the original
  assert bounded["image"].shape == original["image"].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(bounded["label"], original["label"])  # same order and draws
  assert not np.array_equal(bounded["image"], original["image"])  # from fewer pixels


def test_dali_pipeline_feeds_the_run(photo_folder, tmp_path):
  pytest.importorskip("nvidia.dali", reason="DALI is the optional [dali] extra")
  c = _config(dataset=f"image_folder:{photo_folder}", data_dir=str(tmp_path), augment="inception",
              normalize="imagenet", image_size=32, batch_size=4, input_pipeline="dali")
  config_lib.validate(c)
  batch = _first_batch(c)
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 32, 32, 3)
  assert batch["window"].shape == (4, 4) and set(np.unique(batch["label"])) <= {0, 1, 2}
