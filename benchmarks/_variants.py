"""Model-level variants the train-step benchmark can measure (`--patch NAME`).

Each variant swaps one building block of `cnnjax.models` inside a benchmark
worker process only, keeping the variable tree (names, shapes) unchanged, so
the same step, state and batch run with and without it. They exist to
measure a proposed change to the models before anyone makes it; a variant
that helps and gives the same numbers (`--check_numerics`) is a candidate for
the models themselves. Nothing here is imported by the library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Variant:
  description: str
  apply: Callable[[], None]


def _batchnorm_one_pass_affine() -> None:
  """BatchNorm in training mode as one statistics pass and one multiply-add.

  The library computes mean, then mean((x - mean)^2), then
  ((x - mean) * rsqrt(var + eps)) * scale + bias. This variant computes
  E[x] and E[x^2] in one pass (var = E[x^2] - E[x]^2, clipped at 0, as
  flax.linen.BatchNorm's `use_fast_variance`), folds scale and bias into a
  per-channel (a, b) and applies x * a + b: fewer passes over the activation
  in the forward and the backward program.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cnnjax.models import layers  # pylint: disable=import-outside-toplevel

  class OnePassBatchNorm(layers.BatchNorm):

    @nn.compact
    def __call__(self, x, train: bool = False):
      features = x.shape[-1]
      mean_stat = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
      var_stat = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
      scale = (self.param("scale", self.scale_init, (features,), self.param_dtype)
               if self.use_scale else jnp.ones((features,), self.param_dtype))
      bias = (self.param("bias", self.bias_init, (features,), self.param_dtype)
              if self.use_bias else jnp.zeros((features,), self.param_dtype))
      if train:
        batch = x.shape[0]
        group = batch if self.group_size is None else self.group_size
        grouped = x.reshape((batch // group, group) + x.shape[1:])
        reduce_axes = tuple(range(1, grouped.ndim - 1))
        x32 = grouped.astype(jnp.float32)
        mean = jnp.mean(x32, axis=reduce_axes, keepdims=True)
        mean_of_squares = jnp.mean(jnp.square(x32), axis=reduce_axes, keepdims=True)
        var = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
        if not self.is_initializing():
          group_axes = tuple(range(grouped.ndim - 1))
          mean_stat.value = (self.momentum * mean_stat.value
                             + (1 - self.momentum) * jnp.mean(mean, axis=group_axes))
          var_stat.value = (self.momentum * var_stat.value
                            + (1 - self.momentum) * jnp.mean(var, axis=group_axes))
        multiplier = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        offset = bias.astype(jnp.float32) - mean * multiplier
        return (x32 * multiplier + offset).astype(self.dtype).reshape(x.shape)
      multiplier = scale.astype(jnp.float32) * jax.lax.rsqrt(var_stat.value + self.epsilon)
      offset = bias.astype(jnp.float32) - mean_stat.value * multiplier
      return (x.astype(jnp.float32) * multiplier + offset).astype(self.dtype)

  layers.BatchNorm = OnePassBatchNorm


def _pointwise_conv_as_matmul() -> None:
  """1x1 convolutions (any stride, no groups) as a matmul over channels.

  Same kernel variable [1, 1, C_in, C_out]; the strided case subsamples the
  input first (what a 1x1 stride-s VALID convolution computes). On XLA:CPU a
  dot is lowered to a library matmul, a convolution to Eigen's spatial
  convolution, and their gradients differ in the same way.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  original_conv = nn.Conv

  class PointwiseAsMatmulConv(original_conv):

    @nn.compact
    def __call__(self, inputs):
      kernel_size = tuple(self.kernel_size)
      strides = self.strides if self.strides is not None else 1
      strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
      pointwise = (kernel_size == (1, 1) and self.feature_group_count == 1
                   and self.padding in ("VALID", "SAME", ((0, 0), (0, 0)), [(0, 0), (0, 0)])
                   and (self.kernel_dilation in (None, 1, (1, 1))))
      if not pointwise or inputs.ndim != 4:
        return super().__call__(inputs)
      in_features = inputs.shape[-1]
      kernel = self.param("kernel", self.kernel_init, (1, 1, in_features, self.features),
                          self.param_dtype)
      if strides != (1, 1):
        inputs = inputs[:, ::strides[0], ::strides[1], :]
      dtype = self.dtype or inputs.dtype
      y = jnp.einsum("bhwc,cf->bhwf", inputs.astype(dtype), kernel[0, 0].astype(dtype),
                     precision=self.precision)
      if self.use_bias:
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        y = y + bias.astype(dtype)
      return y

  nn.Conv = PointwiseAsMatmulConv


def _max_pool_as_shifted_slices() -> None:
  """Max pooling as the maximum of the window's strided slices of the padded input.

  XLA:CPU turns the gradient of a windowed max (select-and-scatter) into a
  reduce-window that carries argmax indices plus a scatter. Written as
  k*k strided slices and elementwise maxima, the forward is one loop fusion
  and the gradient a chain of selects. Ties split the gradient (JAX's rule
  for max) where select-and-scatter gives it to one input; after a ReLU the
  tied inputs are zeros whose own gradient is zero, so the weights' gradients
  agree (check with --check_numerics).
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  original_max_pool = nn.max_pool

  def max_pool(inputs, window_shape, strides=None, padding="VALID"):
    strides = tuple(strides or (1,) * len(window_shape))
    if inputs.ndim != 4 or len(window_shape) != 2 or isinstance(padding, str):
      return original_max_pool(inputs, window_shape, strides, padding)
    (top, bottom), (left, right) = padding
    padded = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)),
                     constant_values=-jnp.inf)
    out_h = (padded.shape[1] - window_shape[0]) // strides[0] + 1
    out_w = (padded.shape[2] - window_shape[1]) // strides[1] + 1
    result = None
    for di in range(window_shape[0]):
      for dj in range(window_shape[1]):
        window = padded[:, di:di + (out_h - 1) * strides[0] + 1:strides[0],
                        dj:dj + (out_w - 1) * strides[1] + 1:strides[1], :]
        result = window if result is None else jnp.maximum(result, window)
    return result

  nn.max_pool = max_pool


VARIANTS: dict[str, Variant] = {
    "bn_one_pass_affine": Variant(
        "BatchNorm: E[x], E[x^2] in one pass; scale/bias folded into x * a + b",
        _batchnorm_one_pass_affine),
    "pointwise_conv_as_matmul": Variant(
        "1x1 convolutions as a channel matmul (einsum) on the (subsampled) map",
        _pointwise_conv_as_matmul),
    "max_pool_as_slices": Variant(
        "max pooling as the maximum of strided slices (no select-and-scatter gradient)",
        _max_pool_as_shifted_slices),
}


def apply(names: list[str]) -> list[str]:
  """Applies the named variants (before any model is built); returns their names."""
  for name in names:
    if name not in VARIANTS:
      raise ValueError(f"unknown patch {name!r}; choose from {', '.join(VARIANTS)}")
    VARIANTS[name].apply()
  return list(names)
