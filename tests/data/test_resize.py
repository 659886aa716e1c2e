"""The training presets' shorter-side rescaling: area when shrinking, bilinear when growing."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cnnjax.data.image_ops import SHRINK_AREA, resize_image, resize_shorter_side_image

IMAGE = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)


@pytest.mark.parametrize("size, reference", [
    ((15, 20), lambda x, s: tf.image.resize(x, s, method="area")),            # shrinks
    ((60, 80), lambda x, s: tf.image.resize(x, s, antialias=True)),           # grows
    ((20, 60), lambda x, s: tf.image.resize(x, s, antialias=True)),           # one of each
    ((30, 40), lambda x, s: tf.cast(x, tf.float32)),                          # the same size
])
def test_shrink_area_picks_the_filter_by_direction(size, reference):
  got = resize_image(tf.constant(IMAGE), *size, method=SHRINK_AREA).numpy()
  expected = reference(tf.constant(IMAGE, tf.float32), size).numpy()
  assert got.shape == size + (3,)
  np.testing.assert_allclose(got, expected, atol=1e-3)


def test_shorter_side_rescaling_in_graph_mode_keeps_dynamic_sizes():
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def rescale(image):
    return resize_shorter_side_image(image, 12, SHRINK_AREA)
  assert rescale(tf.constant(IMAGE)).shape == (12, 16, 3)
  assert rescale(tf.constant(IMAGE[:6, :8])).shape == (12, 16, 3)
