"""The CPU parts compute what the default graph computes.

`cnnjax.models.cpu` (`Conv` and `BatchNorm`, built on
`cnnjax.models.kernels`) is what a caller passes a model on the CPU backend.
Each part is compared here with the default it replaces (flax.linen.Conv,
the project's two-pass BatchNorm): values, gradients, variables and
BatchNorm statistics, and both in a small bottleneck ResNet against float64.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models import cpu, kernels, layers


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("strides,use_bias", [((1, 1), False), ((2, 2), True)])
def test_pointwise_conv_matches_flax_conv(strides, use_bias):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 5)).astype(np.float32))
  results = {}
  for policy, conv_class in (("off", nn.Conv), ("on", cpu.Conv)):
    conv = conv_class(4, (1, 1), strides=strides, use_bias=use_bias, padding="VALID")
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
def test_batch_norm_matches_the_two_pass_form(group_size):
  rng = np.random.default_rng(2)
  # A mean well away from zero: the one-pass variance must stay accurate there.
  x = jnp.asarray((3.0 + rng.standard_normal((4, 5, 5, 6))).astype(np.float32))
  results = {}
  for policy, norm_class in (("off", layers.BatchNorm), ("on", cpu.BatchNorm)):
    norm = norm_class(group_size=group_size)
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


def test_bottleneck_resnet_is_as_close_to_float64_with_the_cpu_parts():
  """Logits, gradients and statistics of a small bottleneck ResNet (1x1 convs,
  strided projections, stem max pool) with the CPU parts are no further
  from a float64 evaluation than the default float32 graph is."""
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
    parts = cpu.parts() if policy == "on" else {}
    net = models.create("resnet50", num_classes=10, width_multiplier=0.125,
                        dtype=dtype, param_dtype=dtype, **parts)
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
def test_spatial_conv_matches_flax_conv(size, strides, groups, padding):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
  results = {}
  for policy, conv_class in (("off", nn.Conv), ("on", cpu.Conv)):
    conv = conv_class(6, (size, size), strides=strides, feature_group_count=groups,
                      padding=padding)
    variables = conv.init(jax.random.PRNGKey(0), x)
    loss = lambda v, inputs, conv=conv: jnp.sum(jnp.sin(conv.apply(v, inputs)))
    results[policy] = (conv.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables, x))
  for tuned, reference in zip(jax.tree_util.tree_leaves(results["on"]),
                              jax.tree_util.tree_leaves(results["off"])):
    np.testing.assert_allclose(tuned, reference, rtol=1e-5, atol=1e-5)


def test_the_cpu_parts_keep_every_variable_name_and_shape():
  images = jnp.zeros((2, 32, 32, 3))
  for name in ("resnet50", "googlenet_bn", "vgg11_bn"):
    shapes = [jax.eval_shape(lambda m=m: m.init(jax.random.PRNGKey(0), images))
              for m in (models.create(name, width_multiplier=0.125),
                        models.create(name, width_multiplier=0.125, **cpu.parts()))]
    assert jax.tree_util.tree_structure(shapes[0]) == jax.tree_util.tree_structure(shapes[1])
    assert jax.tree_util.tree_leaves(shapes[0]) == jax.tree_util.tree_leaves(shapes[1])


def test_the_cpu_parts_are_reverse_mode_only():
  """Their custom VJPs refuse forward mode; the default graph takes it
  (tests/models/test_parts.py)."""
  x = jnp.ones((1, 4, 4, 2))
  conv = cpu.Conv(3, (1, 1))
  variables = conv.init(jax.random.PRNGKey(0), x)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda v: conv.apply(variables, v), (x,), (x,))
