"""DeviceInput, the steps' share of the input pipeline: each op against its host (TF) twin.

Tolerance: 1e-3 x 255 on the 0..255 scale, for the same uint8 input on both
sides (end-to-end comparisons with the pipeline are in tests/data).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from train_helpers import make_tiny_config, tiny_state

from cnnjax import sharding
from cnnjax.data import augment
from cnnjax.data.stats import IMAGENET_PCA_EIGVEC, IMAGENET_PCA_STD
from cnnjax.preprocessing import device as di
from cnnjax.train import checkpoint, run, steps

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(0, 255, (4, 12, 10, 3)).astype(np.float32)
IMAGES[0, :3] = IMAGES[0, :3, :, :1]  # grey pixels: hue undefined, saturation 0
IMAGES[1, 0, 0] = 0.0  # black
IMAGES[2, 1, 1] = [255.0, 0.0, 0.0]  # pure red, at the hue wrap-around
UINT8 = IMAGES.round().astype(np.uint8)
TOLERANCE = 1e-3 * 255
NO_DISTORTION = di.Photometric(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def _close(ours, theirs, atol=TOLERANCE):
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=atol)


def test_hsv_matches_tf_image():
  hsv = np.asarray(di.rgb_to_hsv(jnp.asarray(IMAGES)))
  reference = tf.image.rgb_to_hsv(IMAGES / 255.0).numpy()
  _close(hsv[..., :2], reference[..., :2], atol=1e-3)
  _close(hsv[..., 2], reference[..., 2] * 255.0)
  _close(di.hsv_to_rgb(jnp.asarray(hsv)), IMAGES)


@pytest.mark.parametrize("factor", [0.5, 1.0, 1.37, 1.5])
def test_saturation_and_contrast_match_tf_image(factor):
  batch = jnp.full((4,), factor)
  _close(di.adjust_saturation(jnp.asarray(IMAGES), batch), tf.image.adjust_saturation(IMAGES, factor))
  _close(di.adjust_contrast(jnp.asarray(IMAGES), batch[:, None, None, None]),
         tf.image.adjust_contrast(IMAGES, factor))


@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.0, 0.13, 0.2])
def test_hue_matches_tf_image(delta):
  _close(di.adjust_hue(jnp.asarray(IMAGES), jnp.full((4,), delta)), tf.image.adjust_hue(IMAGES, delta))


def test_distortions_are_per_example_in_range_and_keyed_by_state_rng_and_step():
  op = di.DeviceInput(photometric=dataclasses.replace(NO_DISTORTION, brightness=32.0))
  grey = jnp.full((512, 2, 2, 3), 128, jnp.uint8)
  rng = jax.random.PRNGKey(3)
  shifts = np.asarray(op.train(grey, rng, jnp.int32(7)))[:, 0, 0, 0] - 128.0
  assert shifts.min() >= -32.0 and shifts.max() <= 32.0
  assert abs(shifts.mean()) < 3.0 and shifts.std() > 15.0  # U[-32, 32]: std 18.5
  # A pure function of (rng, step): what makes a resumed run draw what an uninterrupted one drew.
  jitted = jax.jit(op.train)(grey, rng, jnp.int32(7))
  np.testing.assert_array_equal(np.asarray(jitted)[:, 0, 0, 0] - 128.0, shifts)
  assert not np.array_equal(np.asarray(op.train(grey, rng, jnp.int32(8)))[:, 0, 0, 0] - 128.0, shifts)
  assert not np.array_equal(
      np.asarray(op.train(grey, jax.random.PRNGKey(4), jnp.int32(7)))[:, 0, 0, 0] - 128.0, shifts)


def test_one_hsv_round_trip_equals_saturation_then_hue():
  op = di.DeviceInput(photometric=dataclasses.replace(NO_DISTORTION, saturation=0.5, hue=0.2))
  rng, step = jax.random.PRNGKey(5), jnp.int32(3)
  ours = op.train(jnp.asarray(UINT8), rng, step)
  # The factors the op draws, applied by the separate tf.image-equivalent functions.
  keys = jax.random.split(di._stream_key(rng, di._PHOTOMETRIC_STREAM, step), 4)
  factor = jax.random.uniform(keys[2], (4,), minval=0.5, maxval=1.5)
  delta = jax.random.uniform(keys[3], (4,), minval=-0.2, maxval=0.2)
  separate = di.adjust_hue(di.adjust_saturation(jnp.asarray(UINT8, jnp.float32), factor), delta)
  _close(ours, jnp.clip(separate, 0.0, 255.0))


@pytest.mark.parametrize("mean, std", [((120.0, 110.0, 100.0), (60.0, 50.0, 40.0)),
                                       ((120.0, 110.0, 100.0), None)])
def test_per_channel_normalisation_is_the_host_op(mean, std):
  op = di.DeviceInput(mean=mean, std=std)
  host = augment.normalize(mean, std)({"image": tf.constant(UINT8)})["image"].numpy()
  _close(op.train(jnp.asarray(UINT8), jax.random.PRNGKey(0), 0), host, atol=1e-4)
  _close(op.eval(jnp.asarray(UINT8)), host, atol=1e-4)
  # Multi-view batches [B, V, H, W, 3].
  _close(op.eval(jnp.asarray(UINT8).reshape(2, 2, 12, 10, 3)), host.reshape(2, 2, 12, 10, 3), atol=1e-4)


@pytest.mark.parametrize("side", [20, 16])  # resampled, or plain crops of the mean (frame = 16)
def test_per_pixel_mean_is_resized_and_windowed_like_the_host(side):
  mean_image = RNG.uniform(0, 255, (16, 16, 3)).astype(np.float32)
  op = di.DeviceInput(mean=mean_image)
  images = RNG.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
  host = augment.normalize(mean_image)({"image": tf.constant(images, tf.float32)})["image"].numpy()
  _close(op.eval(jnp.asarray(images)), host)  # no window: the mean resized to the image
  # Windows: the mean of a side x side frame (resized from 16), cropped at (top, left), mirrored.
  frame = tf.image.resize(mean_image, [side, side], "bilinear", antialias=True).numpy()
  windows = np.array([[side, 0, 0, 0], [side, side - 12, 3, 1], [side, 2, side - 12, 0]], np.int32)
  expected = []
  for image, (_, top, left, flipped) in zip(images, windows):
    mean = frame[top:top + 12, left:left + 12]
    expected.append(image - (mean[:, ::-1] if flipped else mean))
  _close(op.eval(jnp.asarray(images), jnp.asarray(windows)), np.stack(expected))


def test_pixels_outside_the_frame_are_the_normalised_mean_colour_zero():
  # CIFAR pads after normalising: the padding is 0 whatever the device received there.
  op = di.DeviceInput(mean=(100.0, 90.0, 80.0), std=(50.0, 40.0, 30.0))
  images = jnp.full((2, 6, 6, 3), 7, jnp.uint8)
  windows = jnp.asarray([[6, -2, 1, 0], [6, -2, 1, 1]], jnp.int32)  # rows -2, -1 and column 6 are out
  out = np.asarray(op.eval(images, windows))
  inside = (np.float32(7) - np.float32([100.0, 90.0, 80.0])) / np.float32([50.0, 40.0, 30.0])
  assert np.all(out[:, :2] == 0.0)
  assert np.all(out[0, 2:, 5] == 0.0) and np.all(out[1, 2:, 0] == 0.0)  # mirrored in the second
  _close(out[0, 2:, :5], np.broadcast_to(inside, (4, 5, 3)), atol=1e-5)
  _close(out[1, 2:, 1:], np.broadcast_to(inside, (4, 5, 3)), atol=1e-5)


def test_pca_lighting_adds_one_colour_per_image_with_alpha_squared_covariance():
  op = di.DeviceInput(pca=di.PcaLighting(tuple(map(float, IMAGENET_PCA_STD)),
                                         tuple(tuple(map(float, r)) for r in IMAGENET_PCA_EIGVEC), 0.1))
  grey = jnp.full((4000, 2, 2, 3), 128, jnp.uint8)
  noise = np.asarray(op.train(grey, jax.random.PRNGKey(0), 0)) - 128.0
  assert np.allclose(noise, noise[:, :1, :1])  # constant over each image
  sigma = IMAGENET_PCA_EIGVEC @ np.diag(IMAGENET_PCA_STD ** 2) @ IMAGENET_PCA_EIGVEC.T
  np.testing.assert_allclose(np.cov(noise[:, 0, 0].T), 0.01 * sigma, atol=0.01 * sigma.max() * 0.1)
  # The host op draws the same distribution.
  host = augment.pca_lighting(IMAGENET_PCA_STD, IMAGENET_PCA_EIGVEC, 0.1)
  draws = np.stack([host({"image": tf.zeros([1, 1, 3]), "rng": tf.constant([i, 1], tf.int64)})["image"][0, 0]
                    for i in range(600)])
  np.testing.assert_allclose(np.cov(draws.T), 0.01 * sigma, atol=0.01 * sigma.max() * 0.25)


def test_float_batches_pass_through_and_equality_goes_by_value():
  op = di.DeviceInput(mean=np.ones((4, 4, 3)), std=(2.0, 2.0, 2.0), photometric=NO_DISTORTION)
  floats = jnp.asarray(IMAGES)
  assert op.train(floats, jax.random.PRNGKey(0), 0) is floats and op.eval(floats) is floats
  twin = di.DeviceInput(mean=np.ones((4, 4, 3), np.float64), std=[2.0, 2.0, 2.0], photometric=NO_DISTORTION)
  assert twin == op and hash(twin) == hash(op)
  assert di.DeviceInput(mean=np.full((4, 4, 3), 1.5), std=(2.0, 2.0, 2.0), photometric=NO_DISTORTION) != op
  assert di.DeviceInput(mean=np.ones((4, 4, 3)), std=(2.0, 2.0, 2.0)) != op
  with pytest.raises(ValueError, match="mean must be"):
    di.DeviceInput(mean=np.ones((4, 3)))


def test_eval_batch_finishes_every_image_key_and_drops_the_windows():
  op = di.DeviceInput(mean=(10.0, 10.0, 10.0))
  batch = {"image_q8": jnp.full((2, 2, 8, 8, 3), 30, jnp.uint8), "window_q8": jnp.zeros((2, 2, 4), jnp.int32)
           .at[..., 0].set(8), "label": jnp.zeros(2, jnp.int32), "mask": jnp.ones(2, bool)}
  out = op.eval_batch(batch)
  assert set(out) == {"image_q8", "label", "mask"}
  assert out["image_q8"].dtype == jnp.float32 and float(out["image_q8"].max()) == 20.0


def test_the_train_and_eval_steps_apply_the_rules_device_input():
  mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
  state, mesh = tiny_state()
  on_device = state.replace(rules=dataclasses.replace(state.rules,
                                                       device_input=di.DeviceInput(mean=mean, std=std)))
  images = RNG.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  labels = RNG.integers(0, 10, 16).astype(np.int32)
  host = ((images - np.float32(mean)) / np.float32(std)).astype(np.float32)
  uint8_batch = sharding.global_batch({"image": images, "label": labels}, mesh)
  float_batch = sharding.global_batch({"image": host, "label": labels}, mesh)
  a = steps.eval_step(on_device, uint8_batch)
  b = steps.eval_step(state, float_batch)
  for key in a:
    np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), rtol=1e-5, atol=1e-5)
  _, metrics_a = steps.train_step(on_device, uint8_batch)
  _, metrics_b = steps.train_step(tiny_state()[0], float_batch)
  np.testing.assert_allclose(float(metrics_a["loss"]), float(metrics_b["loss"]), rtol=1e-5)


@pytest.mark.slow
def test_a_run_on_uint8_batches_resumes_exactly(tmp_path, digits_dir, monkeypatch):
  # input.boundary="uint8" ships uint8 even on the CPU backend.
  traced = []
  original = di.DeviceInput.train

  def spy(self, images, rng, step, window=None, crop=None):
    traced.append((str(images.dtype), window is not None, self.photometric.hue, self.pca is not None))
    return original(self, images, rng, step, window, crop)
  monkeypatch.setattr(di.DeviceInput, "train", spy)
  settings = {"input.augment": "inception", "input.normalize": "per_channel_std",
              "run.num_steps": 4, "checkpoint.every_steps": 2, "run.log_every_steps": 2,
              "input.boundary": "uint8", "input.augment_kwargs": {"hue": 0.1, "pca_color": True}}
  straight = str(tmp_path / "straight")
  run(make_tiny_config(digits_dir, **settings), straight)
  resumed = str(tmp_path / "resumed")
  first = run(make_tiny_config(digits_dir, **settings), resumed, stop_after_steps=2)
  assert first["interrupted"] and first["step"] == 2
  run(make_tiny_config(digits_dir, **settings), resumed)
  # The step received uint8 images with their windows, the configured hue and PCA lighting.
  assert traced and set(traced) == {("uint8", True, 0.1, True)}
  a, meta_a = checkpoint.restore_variables(straight)
  b, meta_b = checkpoint.restore_variables(resumed)
  assert meta_a["step"] == meta_b["step"] == 4
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_benchmark_worker_copies_the_data_constants():
  # benchmarks/_jax_worker.py must not import cnnjax.data (TensorFlow); its copies must agree.
  from benchmarks import _jax_worker
  from cnnjax import data
  np.testing.assert_array_equal(np.float32(_jax_worker._IMAGENET_MEAN_RGB), data.IMAGENET_MEAN_RGB)
  np.testing.assert_array_equal(np.float32(_jax_worker._IMAGENET_STD_RGB), data.IMAGENET_STD_RGB)
  assert _jax_worker._PHOTOMETRIC_STRENGTHS == augment.PHOTOMETRIC_DEFAULTS
