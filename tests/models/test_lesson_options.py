"""Options the lessons notebooks measure: AlexNet's pooling window/stride, a VGG column of one's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from cnnjax import models
from cnnjax.errors import ModelError
from cnnjax.models.vgg import VGG_B_5X5


def _feature_shapes(model, size):
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables, images)
  return variables, {name: tuple(f.shape) for name, f in feats.items()}


def test_alexnet_pooling_window_and_stride():
  overlapping = models.create("alexnet", width_multiplier=0.0625)
  plain = models.create("alexnet", width_multiplier=0.0625, pool_window=2, pool_stride=2)
  _, overlapping_shapes = _feature_shapes(overlapping, 224)
  _, plain_shapes = _feature_shapes(plain, 224)
  # Sec. 3.4: z=3, s=2 and z=2, s=2 give maps of the same size (55 -> 27 -> 13 -> 6)
  assert overlapping_shapes["conv1"][1:3] == plain_shapes["conv1"][1:3] == (27, 27)
  assert overlapping_shapes["conv5"][1:3] == plain_shapes["conv5"][1:3] == (6, 6)
  _, wide = _feature_shapes(models.create("alexnet", width_multiplier=0.0625, pool_window=3,
                                          pool_stride=3), 224)
  assert wide["conv1"][1:3] == (18, 18)
  for bad in ({"pool_window": 0}, {"pool_stride": 1.5}):
    with pytest.raises(ModelError, match=next(iter(bad))):
      models.create("alexnet", **bad)


def test_vgg_conv_table_replaces_the_column():
  model = models.create("vgg_b", width_multiplier=0.0625, conv_table=VGG_B_5X5)
  variables, shapes = _feature_shapes(model, 32)
  params = variables["params"]
  assert params["conv1_1"]["conv"]["kernel"].shape[:2] == (5, 5)
  assert "conv1_2" not in params and "conv2_2" not in params and "conv3_2" in params
  assert shapes["block5"][1:3] == (1, 1)
  with pytest.raises(ModelError, match="conv_table"):
    _feature_shapes(models.create("vgg_b", width_multiplier=0.0625,
                                  conv_table=(("conv3x64",),)), 32)
