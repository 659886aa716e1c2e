"""Shared layers: LRN formula, activations, initialisers, grouped BatchNorm, pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.errors import ModelError
from cnnjax import models
from cnnjax.models import layers


def test_lrn_is_the_papers_formula_without_one_over_n():
  x = np.random.default_rng(0).normal(0, 30, (2, 3, 3, 11)).astype(np.float32)
  out = layers.LocalResponseNorm(size=5, k=2.0, alpha=1e-4, beta=0.75).apply({}, x)
  expected = np.empty_like(x)
  for i in range(11):
    window = x[..., max(0, i - 2):min(11, i + 3)]
    expected[..., i] = x[..., i] / (2.0 + 1e-4 * np.sum(window**2, axis=-1)) ** 0.75
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  # Caffe/PyTorch divide alpha by n: a different, weaker normalisation.
  caffe = layers.LocalResponseNorm(size=5, k=2.0, alpha_over_size=True).apply({}, x)
  assert not np.allclose(caffe, expected, rtol=1e-3)


def test_lrn_keeps_bfloat16():
  x = jnp.ones((1, 2, 2, 8), jnp.bfloat16)
  assert layers.LocalResponseNorm().apply({}, x).dtype == jnp.bfloat16


def test_activations_by_name():
  x = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_allclose(layers.activation("binary")(x), [0, 0, 1])
  np.testing.assert_allclose(layers.activation("logistic")(x), 1 / (1 + np.exp(-x)), rtol=1e-6)
  np.testing.assert_allclose(layers.activation("tanh")(x), 2 / (1 + np.exp(-2 * x)) - 1,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(layers.activation("relu")(x), [0, 0, 3])
  with pytest.raises(ModelError, match="logistic"):
    layers.activation("sigmoid")


def test_binary_step_has_zero_gradient():
  grad = jax.grad(lambda x: jnp.sum(layers.binary_step(x) * 5.0))(jnp.array([-1.0, 0.5, 2.0]))
  np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])


def test_initialisers_by_name():
  @jax.jit
  def draw(key):
    return (layers.initializer("gaussian")(key, (200, 500)),
            layers.initializer("he")(key, (3, 3, 64, 256)),
            layers.initializer("glorot")(key, (300, 100)))

  gaussian, he, glorot = draw(jax.random.key(0))
  assert abs(float(jnp.std(gaussian)) - 0.01) < 5e-4
  he_std = np.sqrt(2 / (9 * 64))
  assert abs(float(jnp.std(he)) - he_std) < 0.05 * he_std
  assert float(jnp.max(jnp.abs(glorot))) <= np.sqrt(6 / 400) + 1e-6
  with pytest.raises(ModelError, match="glorot"):
    layers.initializer("xavier")


def _bn_apply(module, x, train):
  variables = module.init(jax.random.key(0), x, train=False)
  return module.apply(variables, x, train=train, mutable=["batch_stats"])


def test_grouped_batchnorm_normalises_each_group_and_averages_statistics():
  rng = np.random.default_rng(0)
  # Two groups with very different means: a whole-batch BN would not centre each.
  x = np.concatenate([rng.normal(5, 2, (4, 3, 3, 6)), rng.normal(-5, 1, (4, 3, 3, 6))])
  x = x.astype(np.float32)
  out, state = _bn_apply(layers.BatchNorm(group_size=4, momentum=0.9), x, True)
  for group in (out[:4], out[4:]):
    np.testing.assert_allclose(np.mean(group, axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(np.var(group, axis=(0, 1, 2)), 1, atol=1e-3)
  group_means = [x[:4].mean(axis=(0, 1, 2)), x[4:].mean(axis=(0, 1, 2))]
  group_vars = [x[:4].var(axis=(0, 1, 2)), x[4:].var(axis=(0, 1, 2))]
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * np.mean(group_means, 0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * np.mean(group_vars, 0),
                             rtol=1e-5)
  # group_size=None: one group, the whole batch.
  whole, _ = _bn_apply(layers.BatchNorm(group_size=None), x, True)
  np.testing.assert_allclose(np.mean(whole, axis=(0, 1, 2)), 0, atol=1e-5)
  assert not np.allclose(np.mean(whole[:4], axis=(0, 1, 2)), 0, atol=0.1)


def test_batchnorm_eval_mode_uses_and_keeps_running_averages():
  x = np.random.default_rng(1).normal(3, 2, (4, 2, 2, 5)).astype(np.float32)
  module = layers.BatchNorm()
  variables = module.init(jax.random.key(0), x, train=False)
  out, state = module.apply(variables, x, train=False, mutable=["batch_stats"])
  np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5), rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, state["batch_stats"], variables["batch_stats"])


def test_batchnorm_rejects_a_group_size_that_does_not_divide_the_batch():
  with pytest.raises(ModelError, match="bn_group_size"):
    _bn_apply(layers.BatchNorm(group_size=3), jnp.ones((8, 2, 2, 4)), True)


def test_batchnorm_statistics_stay_float32_under_bfloat16():
  module = layers.BatchNorm(dtype=jnp.bfloat16, param_dtype=jnp.float32, group_size=2)
  x = jnp.asarray(np.random.default_rng(2).normal(1, 3, (4, 2, 2, 3)), jnp.bfloat16)
  out, state = _bn_apply(module, x, True)
  assert out.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state))


@pytest.mark.parametrize("size, expected", [(112, 56), (56, 28), (28, 14), (14, 7), (7, 3)])
def test_ceil_mode_max_pool_sizes(size, expected):
  # GoogLeNet: 112 -> 56 -> 28 -> 14 -> 7 with 3x3/2 pools that round up.
  out = layers.max_pool_ceil(jnp.zeros((1, size, size, 1)), 3, 2)
  assert out.shape[1] == expected


def test_ceil_mode_max_pool_values():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  out = layers.max_pool_ceil(x, 3, 2)  # windows rows/cols {0..2}, {2..3}
  np.testing.assert_array_equal(out[0, :, :, 0], [[10, 11], [14, 15]])


def test_adaptive_average_pool_matches_pytorch_bins():
  x = jnp.arange(5.0).reshape(1, 5, 1, 1)
  out = layers.adaptive_avg_pool(jnp.tile(x, (1, 1, 3, 1)), (3, 3))
  # PyTorch bins for 5 -> 3: [0,2), [1,4), [3,5)
  np.testing.assert_allclose(out[0, :, 0, 0], [0.5, 2.0, 3.5])
  same = jnp.ones((1, 7, 7, 2))
  assert layers.adaptive_avg_pool(same, (7, 7)) is same
  # Upsampling (a 1x1 map to 7x7) replicates, as PyTorch does.
  np.testing.assert_allclose(layers.adaptive_avg_pool(jnp.full((1, 1, 1, 2), 3.0), (7, 7)), 3.0)


def test_fully_connected_as_convolution_uses_the_same_kernel():
  module = layers.FullyConnected(4, receptive_field=(2, 2))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 3, 5)), jnp.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(1), x[:, :2, :2]))
  variables = jax.tree.map(
      lambda v: jnp.asarray(np.random.default_rng(1).normal(size=v.shape), v.dtype), variables)

  @jax.jit
  def both(variables, x):
    windows = [module.apply(variables, x[:, i:i + 2, j:j + 2])[0]
               for i in range(2) for j in range(2)]
    return module.apply(variables, x, as_conv=True), jnp.stack(windows).reshape(2, 2, 4)

  dense_map, per_window = both(variables, x)
  assert dense_map.shape == (1, 2, 2, 4)
  np.testing.assert_allclose(dense_map[0], per_window, rtol=1e-5, atol=1e-6)


def test_scaled_channels_respects_groups():
  assert layers.scaled_channels(256, 1.0) == 256
  assert layers.scaled_channels(96, 1 / 16, divisor=2) == 6
  assert layers.scaled_channels(16, 1 / 64) == 1
