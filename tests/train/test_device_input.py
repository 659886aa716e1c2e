"""Photometric distortions in the train step: tf.image's values, per example, exact resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from train_helpers import make_tiny_config

from cnnjax.data import augment
from cnnjax.errors import DataError
from cnnjax.train import checkpoint, run
from cnnjax.train import photometric as ph

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (4, 12, 10, 3)).astype(np.float32)
IMAGES[0, :3] = IMAGES[0, :3, :, :1]  # grey pixels: hue undefined, saturation 0
IMAGES[1, 0, 0] = 0.0  # black
IMAGES[2, 1, 1] = [255.0, 0.0, 0.0]  # pure red, at the hue wrap-around


def _close(ours, theirs):
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-3)


def test_hsv_matches_tf_image():
  hsv = np.asarray(ph.rgb_to_hsv(jnp.asarray(IMAGES)))
  reference = tf.image.rgb_to_hsv(IMAGES / 255.0).numpy()
  _close(hsv[..., :2], reference[..., :2])
  _close(hsv[..., 2], reference[..., 2] * 255.0)
  _close(ph.hsv_to_rgb(jnp.asarray(hsv)), IMAGES)


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.37, 1.5])
def test_saturation_and_contrast_match_tf_image(factor):
  batch = jnp.full((4,), factor)
  _close(ph.adjust_saturation(jnp.asarray(IMAGES), batch), tf.image.adjust_saturation(IMAGES, factor))
  _close(ph.adjust_contrast(jnp.asarray(IMAGES), batch[:, None, None, None]),
         tf.image.adjust_contrast(IMAGES, factor))


@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.0, 0.13, 0.2])
def test_hue_matches_tf_image(delta):
  _close(ph.adjust_hue(jnp.asarray(IMAGES), jnp.full((4,), delta)),
         tf.image.adjust_hue(IMAGES, delta))


def test_distortions_are_per_example_in_range_and_keyed_by_step():
  op = ph.DevicePhotometric(brightness=32.0, contrast=0.0, saturation=0.0, hue=0.0,
                            mean=(0.0, 0.0, 0.0), std=None)
  grey = jnp.full((512, 2, 2, 3), 128, jnp.uint8)
  rng = jax.random.PRNGKey(3)
  shifts = np.asarray(op(grey, rng, jnp.int32(7)))[:, 0, 0, 0] - 128.0
  assert shifts.min() >= -32.0 and shifts.max() <= 32.0
  assert abs(shifts.mean()) < 3.0 and shifts.std() > 15.0  # U[-32, 32]: std 18.5
  np.testing.assert_array_equal(np.asarray(op(grey, rng, jnp.int32(7)))[:, 0, 0, 0] - 128.0, shifts)
  assert not np.array_equal(np.asarray(op(grey, rng, jnp.int32(8)))[:, 0, 0, 0] - 128.0, shifts)


def test_without_distortions_it_is_the_host_normalisation():
  mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
  op = ph.DevicePhotometric(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, mean=mean, std=std)
  images = IMAGES.round().astype(np.uint8)
  host = augment.normalize(mean, std)({"image": tf.constant(images)})["image"].numpy()
  np.testing.assert_allclose(np.asarray(op(jnp.asarray(images), jax.random.PRNGKey(0), 0)), host,
                             rtol=1e-6, atol=1e-5)


def test_the_host_pipeline_stops_at_uint8_geometry():
  ops = augment.train_ops("inception", image_size=8, native_size=None,
                          normalize_op=augment.normalize([1.0, 2.0, 3.0]), photometric="device")
  image = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  out = augment.compose(ops)({"image": tf.constant(image), "rng": tf.constant([1, 2], tf.int64)})
  assert out["image"].dtype == tf.uint8 and out["image"].shape == (8, 8, 3)
  with pytest.raises(DataError, match="pca_color"):
    augment.train_ops("inception", image_size=8, native_size=None, normalize_op=None,
                      pca=(np.ones(3), np.eye(3)), photometric="device", pca_color=True)
  with pytest.raises(DataError, match="photometric must be"):
    augment.train_ops("inception", image_size=8, native_size=None, normalize_op=None,
                      photometric="gpu")


@pytest.mark.slow
def test_device_photometric_run_resumes_exactly(tmp_path, digits_dir, monkeypatch):
  traced = []
  original = ph.DevicePhotometric.__call__

  def spy(self, images, rng, step):
    traced.append((str(images.dtype), self.hue, self.brightness))
    return original(self, images, rng, step)
  monkeypatch.setattr(ph.DevicePhotometric, "__call__", spy)
  settings = dict(augment="inception", normalize="per_channel_std", num_steps=4,
                  checkpoint_every_steps=2, log_every_steps=2,
                  augment_kwargs={"photometric": "device", "hue": 0.1})
  straight = str(tmp_path / "straight")
  run(make_tiny_config(digits_dir, **settings), straight)
  resumed = str(tmp_path / "resumed")
  first = run(make_tiny_config(digits_dir, **settings), resumed, stop_after_steps=2)
  assert first["interrupted"] and first["step"] == 2
  run(make_tiny_config(digits_dir, **settings), resumed)
  # The step received uint8 images and the configured strengths (32: the default).
  assert traced and set(traced) == {("uint8", 0.1, 32.0)}
  a, meta_a = checkpoint.restore_variables(straight)
  b, meta_b = checkpoint.restore_variables(resumed)
  assert meta_a["step"] == meta_b["step"] == 4
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_one_hsv_round_trip_equals_saturation_then_hue():
  op = ph.DevicePhotometric(brightness=0.0, contrast=0.0, saturation=0.5, hue=0.2,
                            mean=(0.0, 0.0, 0.0), std=None)
  images = jnp.asarray(IMAGES.round().astype(np.uint8))
  rng, step = jax.random.PRNGKey(5), jnp.int32(3)
  ours = op(images, rng, step)
  # The factors the op draws, applied by the separate tf.image-equivalent functions.
  keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, ph._STREAM), step), 4)
  factor = jax.random.uniform(keys[2], (4,), minval=0.5, maxval=1.5)
  delta = jax.random.uniform(keys[3], (4,), minval=-0.2, maxval=0.2)
  separate = ph.adjust_hue(ph.adjust_saturation(images.astype(jnp.float32), factor), delta)
  _close(ours, jnp.clip(separate, 0.0, 255.0))


def test_the_benchmark_worker_copies_the_data_constants():
  # benchmarks/_jax_worker.py must not import cnnjax.data (TensorFlow); its copies must agree.
  from benchmarks import _jax_worker
  from cnnjax import data
  np.testing.assert_array_equal(np.float32(_jax_worker._IMAGENET_MEAN_RGB), data.IMAGENET_MEAN_RGB)
  np.testing.assert_array_equal(np.float32(_jax_worker._IMAGENET_STD_RGB), data.IMAGENET_STD_RGB)
  assert _jax_worker._PHOTOMETRIC_STRENGTHS == augment.PHOTOMETRIC_DEFAULTS
