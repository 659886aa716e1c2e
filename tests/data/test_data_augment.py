"""Augmentation ops: eager == tf.data, statistics of the random ones, and their errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import smooth_image
from scipy import stats as scipy_stats

from cnnjax.data import augment
from cnnjax.data.stats import IMAGENET_PCA_EIGVEC, IMAGENET_PCA_STD, compute_stats
from cnnjax.errors import DataError

RNG = np.random.default_rng(0)
IMAGE = smooth_image(RNG, 48, 60)


def _jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


def _example(image, seed=(3, 4)):
  return {"image": tf.constant(image), "label": tf.constant(1, tf.int64),
          "rng": tf.constant(seed, tf.int64)}


OPS = {
    "decode": (augment.decode, _jpeg(IMAGE)),
    "resize": (lambda: augment.resize(20), IMAGE),
    "resize_shorter_side": (lambda: augment.resize_shorter_side(30), IMAGE),
    "random_resize_shorter_side": (lambda: augment.random_resize_shorter_side(30, 50), IMAGE),
    "center_crop": (lambda: augment.center_crop(32), IMAGE),
    "random_crop": (lambda: augment.random_crop(32), IMAGE),
    "pad": (lambda: augment.pad(4), IMAGE),
    "random_flip_left_right": (augment.random_flip_left_right, IMAGE),
    "inception_crop_jpeg": (augment.inception_crop, _jpeg(IMAGE)),
    "inception_crop_decoded": (augment.inception_crop, IMAGE),
    "random_interpolation_resize": (lambda: augment.random_interpolation_resize(24), IMAGE),
    "color_distortion": (augment.color_distortion, IMAGE),
    "pca_lighting": (lambda: augment.pca_lighting(IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC), IMAGE),
    "normalize_channel": (lambda: augment.normalize([120.0, 110.0, 100.0], [60.0, 50.0, 40.0]), IMAGE),
    "normalize_pixel": (lambda: augment.normalize(np.full((24, 30, 3), 7.0, np.float32)), IMAGE),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_the_same_eagerly_and_in_tf_data(name):
  factory, image = OPS[name]
  op = factory()
  eager = op(_example(image))["image"].numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors(_example(image)).map(op)))["image"].numpy()
  assert eager.shape == in_data.shape and eager.shape[-1] == 3
  np.testing.assert_allclose(eager, in_data, atol=1e-3)
  again = op(_example(image))["image"].numpy()
  np.testing.assert_array_equal(eager, again)


def _batched(op, image, count: int, reduce=None) -> np.ndarray:
  """op applied to `image` with seeds (0, i), i < count, in one tf.data pipeline.

  `reduce` maps each output image inside the pipeline (e.g. to its shape), so
  that outputs of varying size can be stacked and fetched at once.
  """
  reduce = reduce or (lambda x: x)
  ds = tf.data.Dataset.range(count).map(
      lambda i: reduce(op({"image": tf.constant(image),
                           "rng": tf.stack([tf.constant(0, tf.int64), i])})["image"]))
  return next(iter(ds.batch(count))).numpy()


@pytest.mark.parametrize("mean, std", [
    ([120.0, 110.0, 100.0], [60.0, 50.0, 40.0]),
    ([120.0, 110.0, 100.0], None),
    (np.linspace(0, 255, 24 * 30 * 3, dtype=np.float32).reshape(24, 30, 3), None),
    (np.linspace(0, 255, 24 * 30 * 3, dtype=np.float32).reshape(24, 30, 3), [2.0, 3.0, 4.0]),
])
@pytest.mark.parametrize("batched", [False, True])
def test_normalize_static_and_dynamic_shapes_give_the_same_values(mean, std, batched):
  # Static shapes use constants of the image's shape, dynamic ones broadcasting.
  image = np.random.default_rng(5).uniform(0, 255, (4, 24, 30, 3) if batched else (24, 30, 3))
  image = image.astype(np.float32)
  expected = (image - np.asarray(mean, np.float32)) / (1.0 if std is None else np.asarray(std, np.float32))
  op = augment.normalize(mean, std)
  static = op({"image": tf.constant(image)})["image"]
  assert static.shape == image.shape
  dynamic = tf.function(lambda x: op({"image": x})["image"],
                        input_signature=[tf.TensorSpec([None] * image.ndim, tf.float32)])(image)
  for result in (static, dynamic):
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6, atol=1e-5)


def test_flip_frequency_is_one_half():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  outputs = _batched(augment.random_flip_left_right(), image, 2000)
  flipped = sum(np.array_equal(o, image[:, ::-1]) for o in outputs)
  assert all(np.array_equal(o, image) or np.array_equal(o, image[:, ::-1]) for o in outputs)
  assert scipy_stats.binomtest(flipped, 2000, 0.5).pvalue > 1e-3


@pytest.mark.parametrize("encoded", [False, True])
def test_inception_crop_area_and_aspect_in_range(encoded):
  size = 96
  image = smooth_image(np.random.default_rng(1), size, size)
  op = augment.inception_crop(area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3))
  source = _jpeg(image) if encoded else image
  shapes = _batched(op, source, 400, reduce=lambda x: tf.shape(x)[:2])
  areas = shapes[:, 0] * shapes[:, 1] / size**2
  aspects = shapes[:, 1] / shapes[:, 0]
  # Integer pixel sizes: allow one pixel of rounding either way.
  assert areas.min() >= 0.08 * (1 - 2 / np.sqrt(0.08 * size**2)) and areas.max() <= 1.0
  assert aspects.min() >= 0.75 * (1 - 2 / 20) and aspects.max() <= 4 / 3 * (1 + 2 / 20)
  assert areas.std() > 0.15 and aspects.std() > 0.1  # really random, over the whole range


def test_fused_jpeg_crop_equals_decode_then_crop():
  image = smooth_image(np.random.default_rng(2), 80, 96)
  encoded = _jpeg(image)
  op = augment.inception_crop()
  fused = op(_example(encoded))["image"].numpy()
  naive = op(_example(tf.io.decode_jpeg(encoded).numpy()))["image"].numpy()
  assert fused.shape == naive.shape
  assert np.abs(fused.astype(int) - naive.astype(int)).mean() < 1.5


def test_scale_jitter_sizes_are_uniform_on_the_range():
  low, high = 16, 48
  op = augment.random_resize_shorter_side(low, high)
  image = np.zeros((8, 12, 3), np.uint8)
  shapes = _batched(op, image, 3000, reduce=tf.shape)
  shorter = shapes[:, 0]
  assert shorter.min() == low and shorter.max() == high
  dequantised = shorter + np.random.default_rng(0).uniform(size=shorter.size)
  assert scipy_stats.kstest(dequantised, "uniform", args=(low, high - low + 1)).pvalue > 1e-3
  assert np.all(np.abs(shapes[:, 1] / shorter - 1.5) < 0.05)  # aspect ratio kept


def test_pca_noise_has_alpha_squared_times_the_pixel_covariance():
  rng = np.random.default_rng(3)
  mixing = np.array([[60.0, 10.0, 0.0], [50.0, 20.0, 5.0], [40.0, 0.0, 30.0]])
  pixels = (rng.standard_normal((20000, 3)) @ mixing.T + 120).clip(0, 255)
  images = tf.data.Dataset.from_tensor_slices({"image": pixels.reshape(-1, 10, 10, 3).astype(np.uint8)})
  stats = compute_stats(images, resolution=10, max_examples=None)
  pca_std, eigvec = stats.pca
  np.testing.assert_allclose(eigvec @ np.diag(pca_std**2) @ eigvec.T, stats.covariance, rtol=1e-4)
  op = augment.pca_lighting(pca_std, eigvec, alpha_std=0.1)
  noise = _batched(op, np.zeros((1, 1, 3), np.float32), 4000)[:, 0, 0]
  expected = 0.01 * stats.covariance
  np.testing.assert_allclose(np.cov(noise.T), expected, atol=0.08 * np.abs(expected).max())
  np.testing.assert_allclose(noise.mean(axis=0), 0, atol=0.1 * np.sqrt(expected.max()))


def test_statistics_of_a_known_image_set():
  images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 30)])
  images[1, 0, 0] = (200, 0, 0)
  ds = tf.data.Dataset.from_tensor_slices({"image": images})
  stats = compute_stats(ds, resolution=4, max_examples=None)
  np.testing.assert_allclose(stats.mean_image[1, 1], [20, 20, 20])
  np.testing.assert_allclose(stats.mean_image[0, 0], [105, 5, 5])
  np.testing.assert_allclose(stats.mean_rgb, images.reshape(-1, 3).mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(stats.covariance, np.cov(images.reshape(-1, 3).T, bias=True), rtol=1e-6)


def test_crop_bigger_than_image_is_a_data_error_eagerly_and_in_tf_data():
  with pytest.raises(DataError, match="bigger than"):
    augment.random_crop(64)(_example(IMAGE))
  with pytest.raises(DataError, match="bigger than"):
    augment.center_crop(50)(_example(IMAGE))
  from cnnjax.data.pipeline import _numpy_batches
  ds = tf.data.Dataset.from_tensors(_jpeg(IMAGE)).map(
      lambda b: augment.compose([augment.decode(), augment.random_crop(64)])(
          {"image": b, "rng": tf.constant([1, 2], tf.int64)})).batch(1)
  with pytest.raises(DataError, match="64x64 crop is bigger than the image"):
    next(_numpy_batches(ds, "test data"))


def test_preset_errors():
  identity = augment.to_float()
  with pytest.raises(DataError, match="scale_min <= scale_max"):
    augment.train_ops("scale_jitter", image_size=224, native_size=None, normalize_op=identity,
                      scale_min=512, scale_max=256)
  with pytest.raises(DataError, match="smaller than the 224x224 crop"):
    augment.train_ops("scale_jitter", image_size=224, native_size=None, normalize_op=identity,
                      scale_min=200, scale_max=300)
  with pytest.raises(DataError, match="smaller than the 224x224 crop"):
    augment.train_ops("alexnet", image_size=224, native_size=None, normalize_op=identity,
                      resize_size=200)
  with pytest.raises(DataError, match="did you mean 'inception'"):
    augment.train_ops("inceptoin", image_size=224, native_size=None, normalize_op=identity)
  with pytest.raises(DataError, match="does not take"):
    augment.train_ops("cifar", image_size=32, native_size=32, normalize_op=identity, scale_min=3)
  with pytest.raises(DataError, match="area_range"):
    augment.train_ops("inception", image_size=32, native_size=None, normalize_op=identity,
                      area_range=(0.5, 0.2))


@pytest.mark.parametrize("preset", augment.PRESETS)
def test_presets_produce_the_input_size(preset):
  ops = augment.compose(augment.train_ops(preset, image_size=32, native_size=None,
                                          normalize_op=augment.normalize([100.0, 100.0, 100.0]),
                                          **({"pca_color": True} if preset == "alexnet" else {}),
                                          pca=(IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC)))
  out = ops(_example(_jpeg(IMAGE)))["image"]
  assert out.shape == (32, 32, 3) and out.dtype == tf.float32
