"""Injected parts: every family takes `activation`, `norm`, `conv` and `max_pool`
from its caller, and its default graph supports every JAX transformation."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.models as models
from cnnjax.errors import ModelError
from cnnjax.models import layers, normalization

# name -> (image side, width multiplier): one small network per family.
SMALL = {"alexnet": (64, 1 / 16), "vgg11_bn": (32, 1 / 16), "googlenet_bn": (32, 1 / 16),
         "resnet50": (32, 1 / 16)}


def _images(size: int, batch: int = 2) -> jax.Array:
  return jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)


def test_resnet18_with_gelu_groupnorm_and_flax_conv_trains_one_step(make_variables,
                                                                     make_train_step,
                                                                     fast_compile):
  model = models.create("resnet18", num_classes=5, width_multiplier=0.25, activation=nn.gelu,
                        norm=functools.partial(nn.GroupNorm, num_groups=8), conv=nn.Conv)
  images, labels = _images(32), jnp.array([1, 4])
  variables = make_variables(model, images)
  assert "batch_stats" not in variables  # GroupNorm keeps no running statistics
  norm = variables["params"]["stage1"]["block1"]["conv1"]["bn"]
  assert set(norm) == {"scale", "bias"}
  # GroupNorm replaced BatchNorm, so the convolutions have no bias, as with BN.
  assert set(variables["params"]["stem"]["conv"]) == {"kernel"}
  step = fast_compile(make_train_step(model), variables, images, labels, jax.random.key(1))
  loss, logits, _, new_variables, grads = step(variables, images, labels, jax.random.key(1))
  assert logits.shape == (2, 5) and np.isfinite(float(loss))
  assert sum(float(jnp.sum(g * g)) for g in jax.tree.leaves(grads)) > 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["params"],
                       new_variables["params"])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("name", list(SMALL))
def test_every_family_takes_an_activation_callable_and_a_norm(name, make_variables,
                                                              fast_compile):
  """gelu and GroupNorm reach every layer: the norms are GroupNorms with
  GroupNorm's variables, no BatchNorm statistics remain, and the logits are finite."""
  size, width = SMALL[name]
  norm_options = {"use_bn": True} if name == "alexnet" else {}
  calls = []

  def gelu(x):
    calls.append(x.shape)
    return nn.gelu(x)

  model = models.create(name, num_classes=3, width_multiplier=width, activation=gelu,
                        norm=functools.partial(nn.GroupNorm, num_groups=1), **norm_options)
  images = _images(size)
  variables = make_variables(model, images)
  assert "batch_stats" not in variables
  kinds = {type(m).__name__ for m in _modules(model, variables, images)}
  assert "GroupNorm" in kinds and "BatchNorm" not in kinds
  assert calls, "the injected activation was never called"
  logits = fast_compile(model.apply, variables, images)(variables, images)
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))


def _modules(model, variables, images):
  """Every submodule instance called during one eval-mode forward pass."""
  seen = []

  def spy(next_fun, args, kwargs, context):
    seen.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(spy):
    jax.eval_shape(model.apply, variables, images)
  return seen


@pytest.mark.parametrize("norm, takes", [
    (layers.BatchNorm, "train"),
    (nn.BatchNorm, "use_running_average"),
    (functools.partial(nn.GroupNorm, num_groups=2), None),
    (nn.LayerNorm, None),
])
def test_norms_get_the_train_argument_their_call_takes(norm, takes):
  assert normalization._train_argument(normalization.module_class(norm)) == takes
  block = layers.ConvNormAct(4, (3, 3), conv=nn.Conv, norm=norm)
  x = _images(8)[..., :2]
  variables = block.init(jax.random.key(0), x)
  _, state = block.apply(variables, x, train=True, mutable=["batch_stats"])
  # BatchNorms move their running statistics in train mode; the others keep none.
  assert bool(state) == (takes is not None)
  if takes:
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         state["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_flax_batchnorm_gets_the_models_bn_settings():
  model = models.create("cifar_resnet20", bn_momentum=0.5, bn_epsilon=1e-3, norm=nn.BatchNorm)
  images = _images(16)
  variables = model.init(jax.random.key(0), images)
  norms = [m for m in _modules(model, variables, images) if isinstance(m, nn.BatchNorm)]
  assert norms and all(m.momentum == 0.5 and m.epsilon == 1e-3 for m in norms)
  # A setting the caller's partial fixes is left as written.
  fixed = models.create("cifar_resnet20", bn_epsilon=1e-3,
                        norm=functools.partial(nn.BatchNorm, epsilon=0.1))
  norms = [m for m in _modules(fixed, variables, images) if isinstance(m, nn.BatchNorm)]
  assert norms and all(m.epsilon == 0.1 for m in norms)


def test_norm_none_drops_normalisation_and_gives_convs_biases():
  model = models.create("cifar_resnet20", norm=None)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  assert "batch_stats" not in variables
  assert set(variables["params"]["stem"]) == {"conv"}
  assert set(variables["params"]["stem"]["conv"]) == {"kernel", "bias"}


def test_a_residual_scale_needs_a_norm_with_a_scale():
  model = models.create("cifar_resnet20", residual_scale_init=0.0,
                        norm=functools.partial(nn.LayerNorm, use_scale=False))
  model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))  # the field exists: fine
  no_scale = type("NoScaleNorm", (nn.Module,), {"__call__": lambda self, x: x,
                                               "__annotations__": {}})
  model = models.create("cifar_resnet20", residual_scale_init=0.0, norm=no_scale)
  with pytest.raises(ModelError, match="residual_scale_init=0.0"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("option, value, message", [
    ("conv", "nn.Conv", "conv='nn.Conv' must be a module class"),
    ("norm", 3, "norm=3 must be a module class or a functools.partial of one or None"),
    ("max_pool", None, "max_pool=None must be"),
    ("activation", "swish", "'relu'.*or a callable"),
])
def test_parts_that_are_not_callables_are_refused_at_create(option, value, message):
  with pytest.raises(ModelError, match=message):
    models.create("resnet18", **{option: value})


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_mode_differentiation_runs_through_the_default_graph(name, make_variables,
                                                                      fast_compile):
  """jax.jvp through every family's default graph, in train mode (BatchNorm
  statistics, dropout, max pooling, 1x1 and strided convolutions) and in eval
  mode, where the tangent equals the reverse-mode directional derivative."""
  size, width = SMALL[name]
  model = models.create(name, num_classes=3, width_multiplier=width)
  images, direction = _images(size), _images(size, batch=2)[::-1] * 0.1
  variables = make_variables(model, images)

  def train_logits(x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(1)})[0]

  def eval_logits(x):
    return model.apply(variables, x)

  def tangents(x, d):
    _, train_tangent = jax.jvp(train_logits, (x,), (d,))
    y, eval_tangent = jax.jvp(eval_logits, (x,), (d,))
    _, pullback = jax.vjp(eval_logits, x)
    basis = jnp.eye(y.size, dtype=y.dtype).reshape((y.size,) + y.shape)
    gradients = jax.vmap(lambda cotangent: pullback(cotangent)[0])(basis)
    reverse = jnp.tensordot(gradients, d, axes=d.ndim).reshape(y.shape)
    return train_tangent, eval_tangent, reverse

  train_tangent, eval_tangent, reverse = fast_compile(tangents, images, direction)(
      images, direction)
  assert train_tangent.shape == eval_tangent.shape == (2, 3)
  assert bool(jnp.all(jnp.isfinite(train_tangent)))
  assert float(jnp.max(jnp.abs(eval_tangent))) > 0
  np.testing.assert_allclose(eval_tangent, reverse, rtol=1e-3,
                             atol=1e-4 * float(jnp.max(jnp.abs(reverse))))
