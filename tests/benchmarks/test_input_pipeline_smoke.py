"""The input-pipeline benchmark in its smallest form: it runs and measures every op.

No timing is asserted (speed targets live in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
import os

import pytest

from benchmarks import input_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("jpegs")
  input_pipeline.make_jpeg_folder(str(folder), num_images=6, width=80, height=60)
  return str(folder)


@pytest.fixture(scope="module")
def encoded(folder):
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
  assert len(paths) == 6 and all(p.endswith(".jpg") for p in paths)
  return [open(p, "rb").read() for p in paths]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("image_size", [None, 32])
def test_one_core_rate_is_positive(encoded, fused, image_size):
  rate = input_pipeline.one_core_rate(encoded, fused=fused, seconds=0.2, image_size=image_size)
  assert math.isfinite(rate) and rate > 0


def test_stage_costs_cover_every_op_of_the_inception_preset(encoded):
  costs = input_pipeline.inception_stage_costs(encoded, seconds=0.6, rounds=1, image_size=32)
  names = [name for name, _ in costs]
  assert names[0].startswith("tf.data") and names[-1] == "total"
  assert [n.split()[0] for n in names[1:-1]] == [
      "inception_crop", "random_interpolation_resize", "random_flip_left_right",
      "color_distortion", "normalize"]
  assert all(math.isfinite(cost) for _, cost in costs)
  # The op costs are differences of successive prefixes: they add up to the total.
  assert sum(cost for _, cost in costs[:-1]) == pytest.approx(costs[-1][1])
  assert costs[-1][1] > 0


@pytest.mark.parametrize("boundary", ["float32", "uint8"])
def test_full_pipeline_rate_is_positive(folder, tmp_path_factory, boundary):
  data_dir = str(tmp_path_factory.mktemp("prepared"))
  rate = input_pipeline.full_pipeline_rate(folder, data_dir, seconds=0.3, boundary=boundary)
  assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("preset, normalize", [("alexnet", "per_pixel"), ("inception", "imagenet")])
def test_device_preprocessing_rates_are_positive_for_both_paths(folder, tmp_path_factory, preset,
                                                                normalize):
  import cnnjax.data
  data_dir = str(tmp_path_factory.mktemp("prepared_device"))
  name = f"image_folder:{folder}"
  cnnjax.data.dataset_info(name, data_dir)
  rates = input_pipeline.device_preprocessing_rates(
      name, data_dir, augment=preset, normalize=normalize, image_size=32, batch_size=2,
      seconds=0.4, rounds=1)
  assert set(rates) == {False, True}
  assert all(math.isfinite(rate) and rate > 0 for rate in rates.values())


def test_real_photographs_make_imagenet_like_jpegs(tmp_path):
  from PIL import Image
  from benchmarks.photos import make_photo_folder
  made = make_photo_folder(str(tmp_path), num_images=4, width=100, height=75)
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files)
  assert len(paths) == 4 and made["images"] == 4 and {"china.jpg", "flower.jpg"} <= set(made["sources"])
  with Image.open(paths[0]) as image:
    assert image.size == (100, 75) and image.format == "JPEG"


@pytest.mark.parametrize("preset", ["inception", "alexnet", "scale_jitter"])
def test_plain_tf_data_baseline_yields_uint8_batches(folder, tmp_path, preset):
  import cnnjax.data
  from cnnjax.data.sources import get_source
  cnnjax.data.dataset_info(f"image_folder:{folder}", str(tmp_path))
  source = get_source(f"image_folder:{folder}", str(tmp_path))
  batch = next(input_pipeline.plain_tf_data(source, preset, image_size=32, batch_size=4))
  assert batch["image"].shape == (4, 32, 32, 3) and str(batch["image"].dtype) == "uint8"


def test_bounded_pixel_error_and_device_resize_cost_are_measured(folder, tmp_path):
  error = input_pipeline.bounded_pixel_error(f"image_folder:{folder}", str(tmp_path), 40,
                                             image_size=32, num_windows=1)
  assert 0 < error["mean_abs"] < 40 and error["psnr_db"] > 15
  assert input_pipeline.device_resize_cost(image_size=16, batch_size=2, repeats=1) > 0
