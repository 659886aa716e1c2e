"""The CPU-tuned formulations compute what the plain jax.lax/flax ones compute.

`cnnjax.models.kernels` replaces 1x1 convolutions, training-mode BatchNorm and
max pooling on CPU. Each is compared here with its reference (flax.linen.Conv,
the two-pass BatchNorm, flax.linen.max_pool): values, gradients and BatchNorm
statistics, including gradient routing through ties of the max pool, and the
whole switch on a small bottleneck ResNet against float64.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ModelError
from cnnjax.models import kernels, layers


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_policy_follows_the_environment(monkeypatch):
  monkeypatch.setenv(kernels.POLICY_ENV, "on")
  assert kernels.use_cpu_kernels()
  monkeypatch.setenv(kernels.POLICY_ENV, "off")
  assert not kernels.use_cpu_kernels()
  monkeypatch.setenv(kernels.POLICY_ENV, "auto")
  assert kernels.use_cpu_kernels() == (jax.default_backend() == "cpu")
  monkeypatch.setenv(kernels.POLICY_ENV, "fastest")
  with pytest.raises(ModelError, match="CNNJAX_CPU_KERNELS"):
    kernels.use_cpu_kernels()


@pytest.mark.parametrize("window,strides,padding", [
    ((3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet stem
    ((2, 2), (2, 2), "VALID"),            # VGG
    ((3, 3), (1, 1), ((1, 1), (1, 1))),   # GoogLeNet pool branch (overlapping, stride 1)
    ((3, 3), (2, 2), ((0, 1), (0, 1))),   # ceil mode (AlexNet, GoogLeNet)
])
def test_max_pool_matches_flax_including_ties(window, strides, padding):
  rng = np.random.default_rng(0)
  # ReLU outputs: most windows hold several equal zeros, and some whole
  # windows are zero, so tie-breaking decides where the gradient goes.
  x = jnp.asarray(np.maximum(rng.standard_normal((2, 9, 11, 3)), 0).astype(np.float32))
  x = x.at[0, :3, :3, 0].set(1.0)  # a window of equal non-zero maxima
  reference, reference_vjp = jax.vjp(lambda v: nn.max_pool(v, window, strides, padding), x)
  tuned, tuned_vjp = jax.vjp(lambda v: kernels.max_pool(v, window, strides, padding), x)
  np.testing.assert_array_equal(tuned, reference)
  grad = jnp.asarray(rng.standard_normal(reference.shape).astype(np.float32))
  # Same routing: only the summation order of overlapping windows may differ.
  np.testing.assert_allclose(tuned_vjp(grad)[0], reference_vjp(grad)[0], rtol=0, atol=1e-5)


def test_max_pool_refuses_what_it_cannot_do():
  x = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ModelError, match="padding"):
    kernels.max_pool(x, (2, 2), (2, 2), "SAME")
  with pytest.raises(ModelError, match="larger than"):
    kernels.max_pool(x, (5, 5), (1, 1))


@pytest.mark.parametrize("strides,use_bias", [((1, 1), False), ((2, 2), True)])
def test_pointwise_conv_matches_flax_conv(monkeypatch, strides, use_bias):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 5)).astype(np.float32))
  results = {}
  for policy in ("off", "on"):
    monkeypatch.setenv(kernels.POLICY_ENV, policy)
    conv = layers.Conv(4, (1, 1), strides=strides, use_bias=use_bias, padding="VALID")
    variables = conv.init(jax.random.PRNGKey(0), x)
    if use_bias:
      variables = jax.tree_util.tree_map(lambda v: v + 0.5, variables)
    loss = lambda v, inputs, conv=conv: jnp.sum(jnp.sin(conv.apply(v, inputs)))
    results[policy] = (conv.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables, x),
                       jax.tree_util.tree_map(jnp.shape, variables))
  assert results["on"][2] == results["off"][2]  # same variable tree
  np.testing.assert_allclose(results["on"][0], results["off"][0], rtol=1e-5, atol=1e-6)
  for tuned, reference in zip(jax.tree_util.tree_leaves(results["on"][1]),
                              jax.tree_util.tree_leaves(results["off"][1])):
    np.testing.assert_allclose(tuned, reference, rtol=1e-5, atol=1e-5)


def test_pointwise_detection():
  assert kernels.conv_is_pointwise((1, 1), "SAME", 1, None, 1)
  assert kernels.conv_is_pointwise((1, 1), ((0, 0), (0, 0)), 1, 1, (1, 1))
  assert not kernels.conv_is_pointwise((3, 3), "SAME", 1, None, 1)
  assert not kernels.conv_is_pointwise((1, 1), ((1, 1), (1, 1)), 1, None, 1)
  assert not kernels.conv_is_pointwise((1, 1), "SAME", 2, None, 1)
  assert not kernels.conv_is_pointwise((1, 1), "CIRCULAR", 1, None, 1)


@pytest.mark.parametrize("group_size", [None, 2])
def test_batch_norm_matches_the_two_pass_form(monkeypatch, group_size):
  rng = np.random.default_rng(2)
  # A mean well away from zero: the one-pass variance must stay accurate there.
  x = jnp.asarray((3.0 + rng.standard_normal((4, 5, 5, 6))).astype(np.float32))
  results = {}
  for policy in ("off", "on"):
    monkeypatch.setenv(kernels.POLICY_ENV, policy)
    norm = layers.BatchNorm(group_size=group_size)
    variables = norm.init(jax.random.PRNGKey(0), x)
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}

    def loss(p, inputs, norm=norm, variables=variables):
      y, state = norm.apply({"params": p, "batch_stats": variables["batch_stats"]}, inputs,
                            train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y)), (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    results[policy] = (y, grads, state)
  np.testing.assert_allclose(results["on"][0], results["off"][0], rtol=1e-5, atol=1e-5)
  for tuned, reference in zip(jax.tree_util.tree_leaves(results["on"][1:]),
                              jax.tree_util.tree_leaves(results["off"][1:])):
    np.testing.assert_allclose(tuned, reference, rtol=1e-4, atol=1e-5)


def test_bottleneck_resnet_is_as_close_to_float64_with_the_tuned_kernels(monkeypatch):
  """Logits, gradients and statistics of a small bottleneck ResNet (1x1 convs,
  strided projections, stem max pool) with the tuned kernels are no further
  from a float64 evaluation than the plain float32 formulation is."""
  model = models.create("resnet50", num_classes=10, width_multiplier=0.125)
  rng = np.random.default_rng(3)
  # Un-normalised pixels (mean 0.5) and a trained-looking state: He-scaled
  # kernels, BatchNorm scales/biases/statistics spread around their inits.
  images = rng.uniform(0.0, 1.0, (4, 32, 32, 3)).astype(np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                          jnp.asarray(images))

  def draw(path, shape):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return rng.standard_normal(shape.shape) * np.sqrt(2.0 / np.prod(shape.shape[:-1]))
    if "scale" in name or "var" in name:
      return rng.uniform(0.5, 1.5, shape.shape)
    return 0.1 * rng.standard_normal(shape.shape)

  variables = jax.tree_util.tree_map_with_path(
      lambda path, shape: draw(path, shape).astype(np.float32), shapes)

  def run(policy, dtype):
    monkeypatch.setenv(kernels.POLICY_ENV, policy)
    net = models.create("resnet50", num_classes=10, width_multiplier=0.125,
                        dtype=dtype, param_dtype=dtype)
    cast = lambda tree: jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), tree)

    def loss(params):
      logits, state = net.apply({"params": params, "batch_stats": cast(variables["batch_stats"])},
                                jnp.asarray(images, dtype), train=True, mutable=["batch_stats"])
      return jnp.mean(jnp.square(logits)), (logits, state)

    (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(cast(variables["params"]))
    return [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves((aux, grads))]

  with jax.enable_x64(True):
    reference = run("off", jnp.float64)
  plain, tuned = run("off", jnp.float32), run("on", jnp.float32)
  plain_error = max(_rel(p, r) for p, r in zip(plain, reference))
  tuned_error = max(_rel(t, r) for t, r in zip(tuned, reference))
  assert tuned_error <= 2 * plain_error + 1e-6, (tuned_error, plain_error)


@pytest.mark.parametrize("size,strides,groups,padding", [
    (3, (1, 1), 1, ((1, 1), (1, 1))),
    (3, (2, 2), 1, ((1, 1), (1, 1))),   # ResNet v1.5 downsampling: phase-split input gradient
    (3, (2, 2), 1, ((0, 1), (1, 0))),   # asymmetric padding
    (7, (2, 2), 1, ((3, 3), (3, 3))),   # the stem
    (2, (2, 2), 1, ((0, 0), (0, 0))),   # even kernel, no padding
    (3, (1, 1), 2, ((1, 1), (1, 1))),   # grouped
])
def test_spatial_conv_matches_flax_conv(monkeypatch, size, strides, groups, padding):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
  results = {}
  for policy in ("off", "on"):
    monkeypatch.setenv(kernels.POLICY_ENV, policy)
    conv = layers.Conv(6, (size, size), strides=strides, feature_group_count=groups,
                       padding=padding)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, inputs, conv=conv: jnp.sum(jnp.sin(conv.apply(v, inputs)))
    results[policy] = (conv.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables, x))
  for tuned, reference in zip(jax.tree_util.tree_leaves(results["on"]),
                              jax.tree_util.tree_leaves(results["off"])):
    np.testing.assert_allclose(tuned, reference, rtol=1e-5, atol=1e-5)
