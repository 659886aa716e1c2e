"""Evaluation views: exact pixels of the deterministic crops, and their shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cnnjax.data
from cnnjax.data import augment, views
from cnnjax.errors import DataError

IDENTITY = augment.to_float()


def _distinct_image(height: int, width: int) -> np.ndarray:
  """Every pixel different, so a crop's position is identified by its values."""
  values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
  return (values % 251).astype(np.uint8)


def _apply(op, image):
  eager = op({"image": tf.constant(image), "label": tf.constant(0)})
  in_data = next(iter(tf.data.Dataset.from_tensors({"image": tf.constant(image),
                                                    "label": tf.constant(0)}).map(op)))
  for key in eager:
    np.testing.assert_allclose(np.asarray(eager[key]), np.asarray(in_data[key]), atol=1e-3)
  return {k: np.asarray(v) for k, v in eager.items()}


def test_ten_crop_views_are_the_documented_pixels():
  image = _distinct_image(40, 40)
  op = views.eval_op("10crop", image_size=32, native_size=None, normalize_op=IDENTITY,
                     resize_size=40)
  crops = _apply(op, image)["image"]
  assert crops.shape == (10, 32, 32, 3)
  expected = [image[:32, :32], image[:32, 8:], image[8:, :32], image[8:, 8:], image[4:36, 4:36]]
  expected += [e[:, ::-1] for e in expected]
  for index, (got, want) in enumerate(zip(crops, expected)):
    np.testing.assert_array_equal(got, want, err_msg=f"view {index}")


def test_ten_crop_of_a_landscape_image_uses_the_centre_square():
  image = _distinct_image(40, 60)
  op = views.eval_op("10crop", image_size=32, native_size=None, normalize_op=IDENTITY,
                     resize_size=40)
  crops = _apply(op, image)["image"]
  np.testing.assert_array_equal(crops[0], image[:32, 10:42])
  np.testing.assert_array_equal(crops[3], image[8:, 18:50])


def test_center_view_is_identity_at_native_size_and_crops_otherwise():
  image = _distinct_image(32, 32)
  op = views.eval_op("center", image_size=32, native_size=32, normalize_op=IDENTITY)
  np.testing.assert_array_equal(_apply(op, image)["image"], image)
  big = _distinct_image(64, 80)
  op = views.eval_op("center", image_size=56, native_size=None, normalize_op=IDENTITY)
  out = _apply(op, big)["image"]
  assert out.shape == (56, 56, 3)
  np.testing.assert_array_equal(out, big[4:60, 12:68])  # 56 / 0.875 = 64: no resize needed


def test_dense_view_is_the_whole_image_at_each_scale_and_its_mirror():
  """VGG Sec. 3.2 / ResNet Sec. 4: shorter side -> Q, aspect kept, no crop."""
  image = _distinct_image(30, 45)
  op = views.eval_op("dense_multiscale", image_size=24, native_size=None, normalize_op=IDENTITY,
                     scales=(30, 36))
  out = _apply(op, image)
  assert set(out) == {"image_q30", "image_q36", "label"} == set(views.multiscale_keys((30, 36))) | {"label"}
  assert out["image_q30"].shape == (2, 30, 45, 3) and out["image_q36"].shape == (2, 36, 54, 3)
  np.testing.assert_array_equal(out["image_q30"][0], image)  # already at Q: untouched
  np.testing.assert_array_equal(out["image_q30"][1], image[:, ::-1])
  whole = views.whole_image_op((30, 36), IDENTITY)({"image": tf.constant(image)})
  for key in ("image_q30", "image_q36"):  # one implementation: the single-image form agrees
    np.testing.assert_array_equal(np.asarray(whole[key]), out[key])


def test_144_crop_layout():
  image = _distinct_image(20, 30)
  op = views.eval_op("144crop", image_size=16, native_size=None, normalize_op=IDENTITY,
                     scales=(20, 22, 24, 26))
  crops = _apply(op, image)["image"]
  assert crops.shape == (144, 16, 16, 3)
  # Scale 0 (Q = 20 = the image's shorter side: no resize); square 0 = left 20x20.
  left = image[:, :20]
  np.testing.assert_array_equal(crops[0], left[:16, :16])      # top-left corner
  np.testing.assert_array_equal(crops[1], left[:16, :16][:, ::-1])  # its mirror
  np.testing.assert_array_equal(crops[2], left[:16, 4:])       # top-right corner
  np.testing.assert_array_equal(crops[8], left[2:18, 2:18])     # centre crop
  right = image[:, 10:]
  v = ((0 * 3 + 2) * 6 + 3) * 2  # scale 0, square 2 (right), crop 3 (bottom-right)
  np.testing.assert_array_equal(crops[v], right[4:, 4:])
  portrait = _apply(op, _distinct_image(30, 20))["image"]
  top = _distinct_image(30, 20)[:20]
  np.testing.assert_array_equal(portrait[0], top[:16, :16])


def test_view_errors():
  with pytest.raises(DataError, match="did you mean '10crop'"):
    views.eval_op("10crops", image_size=224, native_size=None, normalize_op=IDENTITY)
  with pytest.raises(DataError, match="smaller than the 224x224 crop"):
    views.eval_op("10crop", image_size=224, native_size=None, normalize_op=IDENTITY,
                  resize_size=200)
  with pytest.raises(DataError, match="does not take"):
    views.eval_op("center", image_size=224, native_size=None, normalize_op=IDENTITY, scales=(1,))


# ---------------------------------------------- images already at the network's size


def test_native_ten_crop_cuts_the_zero_padded_image_without_rescaling():
  """CIFAR geometry: corners and centre of the 4-pixel zero-padded image, then mirrored."""
  image = _distinct_image(32, 32)
  op = views.eval_op("10crop", image_size=32, native_size=32, normalize_op=IDENTITY)
  crops = _apply(op, image)["image"]
  assert crops.shape == (10, 32, 32, 3)
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  expected = [padded[:32, :32], padded[:32, 8:], padded[8:, :32], padded[8:, 8:],
              padded[4:36, 4:36]]
  expected += [e[:, ::-1] for e in expected]
  for index, (got, want) in enumerate(zip(crops, expected)):
    np.testing.assert_array_equal(got, want, err_msg=f"view {index}")
  np.testing.assert_array_equal(crops[4], image)  # the centre crop is the image itself
  # 144crop on a native-size image: the same 10 crops (no scales, no squares).
  op = views.eval_op("144crop", image_size=32, native_size=32, normalize_op=IDENTITY)
  np.testing.assert_array_equal(_apply(op, image)["image"], crops)
  # An explicit resize_size keeps the rescaling view.
  op = views.eval_op("10crop", image_size=32, native_size=32, normalize_op=IDENTITY,
                     resize_size=40)
  assert not np.array_equal(_apply(op, image)["image"][4], image)


def test_native_multiscale_is_the_image_and_its_mirror_at_its_own_size():
  image = _distinct_image(32, 32)
  op = views.eval_op("dense_multiscale", image_size=32, native_size=32, normalize_op=IDENTITY)
  out = _apply(op, image)
  assert [k for k in out if k.startswith("image")] == ["image_q32"]
  np.testing.assert_array_equal(out["image_q32"], np.stack([image, image[:, ::-1]]))


@pytest.mark.parametrize("view", ["10crop", "dense_multiscale"])
def test_native_views_finish_on_the_device_as_on_the_host(digits_dir, view):
  """The padded crops' windows reach outside the frame: the device zeroes that padding."""
  import jax.numpy as jnp

  import cnnjax.data
  args = dict(data_dir=digits_dir, global_batch_size=4, view=view, image_size=32,
              normalize="per_pixel", process_index=0, process_count=1)
  want = next(cnnjax.data.eval_iterator("digits", boundary="float32", **args))
  batch = next(cnnjax.data.eval_iterator("digits", boundary="uint8", **args))
  finish = cnnjax.data.device_input("digits", normalize="per_pixel", data_dir=digits_dir)
  got = finish.eval_batch({k: jnp.asarray(v) for k, v in batch.items()})
  keys = [k for k in want if k.startswith("image")]
  assert keys and set(got) == set(want)
  for key in keys:
    np.testing.assert_allclose(np.asarray(got[key]), want[key], atol=0.51 + 1e-3 * 255)
  if view == "10crop":
    assert np.all(want["image"][:, 0, :4] == 0)  # the top-left crop's padding rows


def test_native_views_without_flips_or_padding():
  image = _distinct_image(32, 32)
  op = views.eval_op("10crop", image_size=32, native_size=32, normalize_op=IDENTITY, flip=False)
  crops = _apply(op, image)["image"]
  assert crops.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(crops[0], np.pad(image, [(4, 4), (4, 4), (0, 0)])[:32, :32])
  op = views.eval_op("10crop", image_size=32, native_size=32, normalize_op=IDENTITY, flip=False,
                     pad=0)
  np.testing.assert_array_equal(_apply(op, image)["image"], np.stack([image] * 5))
  op = views.eval_op("dense_multiscale", image_size=32, native_size=32, normalize_op=IDENTITY,
                     flip=False)
  np.testing.assert_array_equal(_apply(op, image)["image_q32"], image[None])


@pytest.mark.parametrize("view, kwargs", [("center", {}), ("10crop", {"resize_size": 40})])
def test_apply_eval_view_equals_the_pipelines_batches(tmp_path, view, kwargs):
  """One image through `apply_eval_view` is what eval_iterator feeds the network for it."""
  from data_helpers import smooth_image, write_image
  from PIL import Image

  from cnnjax.data.stats import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
  from cnnjax.data.views import apply_eval_view
  rng = np.random.default_rng(11)
  paths = []
  for i, (height, width) in enumerate([(50, 70), (64, 48), (45, 45)]):
    paths.append(str(tmp_path / "imgs" / "val" / f"c{i % 2}" / f"{i}.png"))
    write_image(paths[-1], smooth_image(rng, height, width))
    write_image(str(tmp_path / "imgs" / "train" / f"c{i % 2}" / f"{i}.png"), smooth_image(rng, 40, 40))
  batch = next(cnnjax.data.eval_iterator(
      f"image_folder:{tmp_path / 'imgs'}", data_dir=str(tmp_path / "data"), split="val",
      global_batch_size=3, view=view, view_kwargs=kwargs, image_size=32, normalize="imagenet",
      process_index=0, process_count=1, boundary="float32"))
  for path in paths:
    single = apply_eval_view(np.asarray(Image.open(path)), view, image_size=32,
                             mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, **kwargs)
    assert set(single) == {"image"} and single["image"].dtype == np.float32
    assert single["image"].shape == batch["image"].shape[1:]
    assert any(np.array_equal(single["image"], row) for row in batch["image"]), path


def _folder(tmp_path, shapes) -> str:
  from data_helpers import smooth_image, write_image
  rng = np.random.default_rng(5)
  for split in ("train", "val"):
    for i, (height, width) in enumerate(shapes):
      write_image(str(tmp_path / "imgs" / split / f"c{i % 2}" / f"{i}.png"),
                  smooth_image(rng, height, width))
  return f"image_folder:{tmp_path / 'imgs'}"


@pytest.mark.parametrize("normalize", ["per_channel", "per_pixel"])
def test_dense_view_batches_whole_images_of_one_fixed_shape(tmp_path, normalize):
  """A dataset of one non-square shape batches the whole rescaled images (30x45 -> 24x36 at
  Q=24), host- and device-finished alike."""
  import jax.numpy as jnp

  from cnnjax.data.sources import get_source
  dataset = _folder(tmp_path, [(30, 45)] * 4)
  # An image folder does not declare a shape (tfds datasets such as celeb_a do): declare it on
  # the process's prepared source, which every reader of the dataset shares.
  source = get_source(dataset, str(tmp_path / "data"))
  assert get_source(dataset, str(tmp_path / "data")) is source
  source.image_shape = (30, 45, 3)
  args = dict(data_dir=str(tmp_path / "data"), split="val", global_batch_size=4,
              view="dense_multiscale", view_kwargs={"scales": (24, 30)}, image_size=24,
              normalize=normalize, process_index=0, process_count=1)
  want = next(cnnjax.data.eval_iterator(dataset, boundary="float32", **args))
  assert want["image_q24"].shape == (4, 2, 24, 36, 3) and want["image_q30"].shape == (4, 2, 30, 45, 3)
  batch = next(cnnjax.data.eval_iterator(dataset, boundary="uint8", **args))
  finish = cnnjax.data.device_input(dataset, normalize=normalize, data_dir=str(tmp_path / "data"))
  got = finish.eval_batch({k: jnp.asarray(v) for k, v in batch.items()})
  for key in ("image_q24", "image_q30"):
    np.testing.assert_allclose(np.asarray(got[key]), want[key], atol=0.51 + 1e-3 * 255)


def test_dense_view_of_images_of_varying_shapes_names_the_whole_image_reader(tmp_path):
  dataset = _folder(tmp_path, [(30, 45), (40, 32)])
  with pytest.raises(DataError, match="vary in shape.*whole_image_batches"):
    next(cnnjax.data.eval_iterator(dataset, data_dir=str(tmp_path / "data"), split="val",
                                   global_batch_size=2, view="dense_multiscale",
                                   view_kwargs={"scales": (24,)}, image_size=24,
                                   process_index=0, process_count=1, boundary="float32"))
