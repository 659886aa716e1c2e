"""uint8 to the device: every preset and view ships uint8, and DeviceInput finishes it as the host would.

The host's float path and the uint8 path draw the same crops and flips (the
same op positions); they differ by the rounding of the host's last float
image to uint8 (at most 0.5 grey levels) plus the operations' float error
(1e-3 x 255), which is the tolerance below, in 0..255 units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.data
from cnnjax.data import augment, normalization
from cnnjax.errors import DataError

ROUNDING_AND_OPS = 0.5 + 1e-3 * 255
PRESET_OPTIONS = {"none": {}, "cifar": {}, "alexnet": {}, "scale_jitter": {},
                  "inception": {"photometric": False}}  # colour draws differ between TF and JAX
COLOUR_OPTIONS = {"alexnet": {"pca_color": True}, "scale_jitter": {"pca_color": "imagenet"},
                  "inception": {}}
VIEW_OPTIONS = [("center", {}), ("center", {"resize_size": 28}), ("10crop", {}),
                ("dense_multiscale", {"scales": (24, 40)}), ("144crop", {"scales": (24, 28)})]


def _scale(normalize: str, digits_dir: str) -> np.ndarray:
  """What one grey level becomes after normalisation, per channel."""
  if normalize != "per_channel_std":
    return np.ones(3, np.float32)
  _, std = cnnjax.data.channel_normalization("digits", normalize=normalize, data_dir=digits_dir)
  return 1.0 / np.asarray(std, np.float32)


def _assert_uint8_bytes(batch, key="image"):
  images = batch[key]
  assert images.dtype == np.uint8 and images.nbytes == images.size  # one byte per channel value
  window = batch["window" + key[len("image"):]]
  assert window.dtype == np.int32 and window.shape == images.shape[:-3] + (4,)


@pytest.mark.parametrize("normalize", ["per_channel_std", "per_pixel"])
@pytest.mark.parametrize("preset", augment.PRESETS)
def test_train_batches_are_uint8_and_the_device_finishes_them_as_the_host(digits_dir, preset, normalize):
  _compare_train_batches(digits_dir, preset, normalize, image_size=24)


def test_cifar_padding_around_a_per_pixel_mean_of_the_images_own_size(digits_dir):
  # Frame = the statistics' 32 x 32: the windows are slices of the mean, reaching into the padding.
  _compare_train_batches(digits_dir, "cifar", "per_pixel", image_size=32)


def _compare_train_batches(digits_dir, preset, normalize, image_size):
  options = PRESET_OPTIONS[preset]
  args = dict(data_dir=digits_dir, global_batch_size=8, augment=preset, augment_kwargs=options,
              image_size=image_size, normalize=normalize, process_index=0, process_count=1, seed=3)
  host = cnnjax.data.train_iterator("digits", boundary="float32", **args)
  shipped = cnnjax.data.train_iterator("digits", boundary="uint8", **args)
  finish = cnnjax.data.device_input("digits", augment=preset, augment_kwargs=options,
                                    normalize=normalize, data_dir=digits_dir)
  for _ in range(2):
    want, batch = next(host), next(shipped)
    assert want["image"].dtype == np.float32 and "window" not in want
    _assert_uint8_bytes(batch)
    np.testing.assert_array_equal(batch["label"], want["label"])
    got = finish.train(jnp.asarray(batch["image"]), jax.random.PRNGKey(0), jnp.int32(0),
                       jnp.asarray(batch["window"]))
    np.testing.assert_allclose(np.asarray(got), want["image"],
                               atol=float(ROUNDING_AND_OPS * _scale(normalize, digits_dir).max()))


@pytest.mark.parametrize("normalize", ["per_channel_std", "per_pixel"])
@pytest.mark.parametrize("view, view_kwargs", VIEW_OPTIONS)
def test_eval_batches_of_every_view_are_uint8_and_finish_as_the_host(digits_dir, view, view_kwargs,
                                                                    normalize):
  args = dict(data_dir=digits_dir, global_batch_size=4, view=view, view_kwargs=view_kwargs,
              image_size=24, normalize=normalize, process_index=0, process_count=1)
  want = next(cnnjax.data.eval_iterator("digits", boundary="float32", **args))
  batch = next(cnnjax.data.eval_iterator("digits", boundary="uint8", **args))
  image_keys = [k for k in batch if k.startswith("image")]
  assert image_keys and image_keys == [k for k in want if k.startswith("image")]
  for key in image_keys:
    _assert_uint8_bytes(batch, key)
  finish = cnnjax.data.device_input("digits", normalize=normalize, data_dir=digits_dir)
  got = finish.eval_batch({k: jnp.asarray(v) for k, v in batch.items()})
  assert set(got) == set(want)
  for key in image_keys:
    np.testing.assert_allclose(np.asarray(got[key]), want[key],
                               atol=float(ROUNDING_AND_OPS * _scale(normalize, digits_dir).max()))


@pytest.mark.parametrize("preset", ["alexnet", "scale_jitter", "inception"])
def test_colour_augmentation_moves_to_the_device_with_the_same_geometry(digits_dir, preset):
  options = COLOUR_OPTIONS[preset]
  args = dict(data_dir=digits_dir, global_batch_size=8, augment=preset, augment_kwargs=options,
              image_size=24, normalize="per_channel", process_index=0, process_count=1)
  batch = next(cnnjax.data.train_iterator("digits", boundary="uint8", **args))
  # Placeholders hold the colour ops' places, so every geometric op keeps its seed.
  pca = (np.ones(3), np.eye(3))
  host_ops = augment.train_ops(preset, image_size=24, native_size=32, normalize_op=None, pca=pca,
                               **options)
  device_ops = augment.train_ops(preset, image_size=24, native_size=32, normalize_op=None, pca=pca,
                                 boundary="uint8", **options)
  assert len(device_ops) == len(host_ops) + 1  # + the rounding to uint8
  finish = cnnjax.data.device_input("digits", augment=preset, augment_kwargs=options,
                                    normalize="per_channel", data_dir=digits_dir)
  assert (finish.pca is not None) == ("pca_color" in options)
  assert (finish.photometric is not None) == (preset == "inception")
  images, window = jnp.asarray(batch["image"]), jnp.asarray(batch["window"])
  coloured = finish.train(images, jax.random.PRNGKey(1), jnp.int32(5), window)
  normalised_only = finish.eval(images, window)
  assert np.all(np.abs(np.asarray(coloured - normalised_only)).max(axis=(1, 2, 3)) > 0.1)


def test_one_boundary_setting_its_choices_and_conflicts(digits_dir):
  from cnnjax.preprocessing import boundary
  assert boundary.resolve_boundary("float32") == "float32"
  assert boundary.resolve_boundary("auto", backend="gpu") == "uint8"
  assert boundary.resolve_boundary("auto", backend="tpu") == "uint8"
  # JAX runs on the CPU in the tests: "auto" is the CPU's measured choice.
  assert boundary.resolve_boundary("auto") == boundary.CPU_BOUNDARY
  assert normalization.resolve_device_preprocessing("uint8") is True
  assert normalization.resolve_device_preprocessing("float32") is False
  with pytest.raises(DataError, match="boundary must be one of 'auto', 'float32', 'uint8'"):
    cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=4,
                               boundary="gpu", process_index=0, process_count=1)
  with pytest.raises(DataError, match="boundary must be one of"):
    cnnjax.data.eval_iterator("digits", data_dir=digits_dir, global_batch_size=4,
                              boundary=True, process_index=0, process_count=1)
  with pytest.raises(DataError, match="boundary 'dali' is the DALI pipeline's"):
    cnnjax.data.train_iterator("digits", data_dir=digits_dir, global_batch_size=4,
                               boundary="dali", process_index=0, process_count=1)
  with pytest.raises(DataError, match="photometric must be True or False"):
    augment.train_ops("inception", image_size=8, native_size=None, normalize_op=None,
                      photometric="device")
  with pytest.raises(DataError, match="preset 'cifar' has none to leave"):
    augment.train_ops("cifar", image_size=8, native_size=None, normalize_op=None,
                      boundary="canvas")


def test_the_factory_refuses_what_the_iterators_refuse(digits_dir):
  with pytest.raises(DataError, match=r"augmentation preset 'cifar' does not take \['bogus'\]"):
    cnnjax.data.device_input("digits", augment="cifar", augment_kwargs={"bogus": 1},
                             data_dir=digits_dir)
  with pytest.raises(DataError, match="did you mean 'alexnet'"):
    cnnjax.data.device_input("digits", augment="alexnte", data_dir=digits_dir)
  with pytest.raises(DataError, match="photometric must be True or False"):
    cnnjax.data.device_input("digits", augment="inception", augment_kwargs={"photometric": "gpu"},
                             data_dir=digits_dir)
  with pytest.raises(DataError, match="pca_color must be"):
    cnnjax.data.device_input("digits", augment="alexnet", augment_kwargs={"pca_color": "yes"},
                             data_dir=digits_dir)
  with pytest.raises(DataError, match="unknown normalize"):
    cnnjax.data.device_input("digits", normalize="per_pixle", data_dir=digits_dir)
  # Same statistics as the host path.
  mean, std = cnnjax.data.channel_normalization("digits", normalize="per_channel_std", data_dir=digits_dir)
  finish = cnnjax.data.device_input("digits", normalize="per_channel_std", data_dir=digits_dir)
  np.testing.assert_allclose(finish.mean, mean, rtol=1e-6)
  np.testing.assert_allclose(finish.std, std, rtol=1e-6)
  assert finish.photometric is None and finish.pca is None
  assert cnnjax.data.device_input("digits", normalize="per_pixel", data_dir=digits_dir).mean.shape == (32, 32, 3)


def test_crop_and_flip_draw_what_tf_image_draws_and_the_window_follows_them():
  import tensorflow as tf
  from cnnjax.data import geometry
  image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
  ops = augment.compose([geometry.mark_window(), geometry.pad(3), geometry.random_crop(16),
                         geometry.random_flip_left_right()])
  padded = np.pad(image, [(3, 3), (3, 3), (0, 0)], constant_values=0)
  flips = 0
  for seed in range(12):
    rng = tf.constant([seed, 7], tf.int64)
    out = ops({"image": tf.constant(image), "rng": rng})
    fold = lambda i: tf.random.experimental.stateless_fold_in(rng, i)  # noqa: E731
    crop = tf.image.stateless_random_crop(tf.constant(padded), [16, 16, 3], seed=fold(2))
    want = tf.image.stateless_random_flip_left_right(crop, seed=fold(3)).numpy()
    np.testing.assert_array_equal(out["image"].numpy(), want)
    frame, top, left, flipped = out["window"].numpy().tolist()
    assert frame == 20 and -3 <= top <= 7 and -3 <= left <= 7
    flips += flipped
    # Every output pixel inside the frame is the frame's pixel the window names.
    unflipped = want[:, ::-1] if flipped else want
    rows, columns = np.arange(16) + top, np.arange(16) + left
    inside = ((rows >= 0) & (rows < 20))[:, None] & ((columns >= 0) & (columns < 20))[None, :]
    expected = image[np.clip(rows, 0, 19)][:, np.clip(columns, 0, 19)]
    np.testing.assert_array_equal(unflipped[inside], expected[inside])
    assert np.all(unflipped[~inside] == 0)
  assert 0 < flips < 12
