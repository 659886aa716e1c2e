"""Numeric model options outside their valid range are refused by `create`
(and by a module built directly, when it is first called), naming the range."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import cnnjax.models as models
from cnnjax.errors import ModelError


@pytest.mark.parametrize("name, option, value, message", [
    ("cifar_resnet20", "bn_momentum", 2.0, r"bn_momentum=2.0 is out of range; it must be a "
                                           r"number in \[0, 1\)"),
    ("cifar_resnet20", "bn_momentum", -0.1, r"in \[0, 1\)"),
    ("cifar_resnet20", "bn_momentum", 1.0, r"in \[0, 1\)"),
    ("cifar_resnet20", "bn_epsilon", -1, "bn_epsilon=-1 is out of range; it must be a number > 0"),
    ("cifar_resnet20", "bn_epsilon", 0.0, "> 0"),
    ("cifar_resnet20", "bn_group_size", 0, "an integer >= 1"),
    ("cifar_resnet20", "width_multiplier", 0.0, "width_multiplier=0.0 .* a number > 0"),
    ("cifar_resnet20", "width_multiplier", float("nan"), "a number > 0"),
    ("cifar_resnet20", "in_channels", 0, "in_channels=0 .* an integer >= 1"),
    ("cifar_resnet20", "width", 2.5, "width=2.5 .* an integer >= 1"),
    ("cifar_resnet20", "stage_sizes", (3, 0, 3), "a non-empty sequence of block counts"),
    ("vgg16", "dropout_rate", 1.0, r"dropout_rate=1.0 .* in \[0, 1\)"),
    ("vgg16", "fc_features", 0, "an integer >= 1"),
    ("alexnet", "dropout_rate", -0.5, r"in \[0, 1\)"),
    ("googlenet", "aux_dropout_rate", 1.5, r"aux_dropout_rate=1.5 .* in \[0, 1\)"),
    ("googlenet", "in_channels", True, "an integer >= 1"),
])
def test_out_of_range_options_are_refused_at_create(name, option, value, message):
  with pytest.raises(ModelError, match=message):
    models.create(name, **{option: value})


@pytest.mark.parametrize("num_classes", [0, -3, 2.0])
def test_num_classes_must_be_a_positive_integer(num_classes):
  with pytest.raises(ModelError, match="num_classes=.* an integer >= 1"):
    models.create("resnet18", num_classes=num_classes)


def test_edge_values_inside_the_ranges_are_accepted():
  models.create("cifar_resnet20", bn_momentum=0.0, bn_epsilon=1e-12, bn_group_size=None,
                width_multiplier=0.01, num_classes=1, in_channels=1)
  models.create("vgg16", dropout_rate=0.0)


def test_a_module_built_directly_is_checked_as_it_is_built():
  with pytest.raises(ModelError, match="bn_momentum=1.5 is out of range"):
    models.resnet.ResNet(stage_sizes=(1, 1), bn_momentum=1.5)


def test_options_are_checked_once_per_build_not_at_every_call(monkeypatch):
  calls = []
  check_module = models.options.check_module
  monkeypatch.setattr(models.options, "check_module",
                      lambda module: calls.append(type(module).__name__) or check_module(module))
  model = models.create("cifar_resnet20", width_multiplier=0.125)
  assert calls == ["ResNet"]
  jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  assert calls.count("ResNet") <= 2  # flax may clone the top module once to bind it


def test_torchvisions_zero_init_residual_points_to_the_one_option():
  with pytest.raises(ModelError, match=r"residual_scale_init=0.0"):
    models.create("resnet18", zero_init_residual=True)
