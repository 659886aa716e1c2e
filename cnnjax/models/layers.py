"""Building blocks shared by every model family.

Everything a family needs to vary by name lives here as a table: activations
(`ACTIVATIONS`), initialisers (`INITIALIZERS`). Convolution, normalisation and
activation are combined by `ConvNormAct`, which receives its convolution and
normalisation as partials, so a model decides dtype, initialisers and
BatchNorm settings once, at the top, and every block inherits them.

This module, like all of `cnnjax.models`, needs only jax and flax.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ModelError, close_matches
from cnnjax.models import kernels

Array = jax.Array
ModuleDef = Any  # a Module class or a functools.partial of one
Initializer = Callable[..., Array]


# ---------------------------------------------------------------- activations


def binary_step(x: Array) -> Array:
  """The perceptron's step function [x > 0].

  Its derivative is zero almost everywhere (and undefined at 0), so gradient
  descent cannot train through it: JAX returns a zero gradient, which is the
  honest answer. It is here for the lecture's comparison of activations.
  """
  return (x > 0).astype(x.dtype)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "logistic": nn.sigmoid,  # 1 / (1 + exp(-x))
    "tanh": jnp.tanh,  # 2 / (1 + exp(-2x)) - 1
    "binary": binary_step,
}


def activation(name: str) -> Callable[[Array], Array]:
  """The activation function called `name` (one of `ACTIVATIONS`)."""
  if name not in ACTIVATIONS:
    raise ModelError(
        f"unknown activation {name!r}; {close_matches(name, ACTIVATIONS)} "
        f"(allowed: {', '.join(ACTIVATIONS)})")
  return ACTIVATIONS[name]


# --------------------------------------------------------------- initialisers

INITIALIZERS: dict[str, Initializer] = {
    # AlexNet: "zero-mean Gaussian distribution with standard deviation 0.01".
    "gaussian": nn.initializers.normal(stddev=0.01),
    # Glorot & Bengio (2010), the VGG paper's later finding and Caffe's "xavier".
    "glorot": nn.initializers.glorot_uniform(),
    # He et al. (2015): std sqrt(2 / fan_in), the forward-pass case of the paper.
    "he": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    # The same with fan_out (torchvision's and Flax's ImageNet example's choice).
    "he_fan_out": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    # Flax's own default for Dense layers.
    "lecun": nn.initializers.lecun_normal(),
}


def initializer(name: str) -> Initializer:
  """The kernel initialiser called `name` (one of `INITIALIZERS`)."""
  if name not in INITIALIZERS:
    raise ModelError(
        f"unknown initialiser {name!r}; {close_matches(name, INITIALIZERS)} "
        f"(allowed: {', '.join(INITIALIZERS)})")
  return INITIALIZERS[name]


def scaled_channels(channels: int, multiplier: float, divisor: int = 1) -> int:
  """`channels * multiplier`, rounded to a positive multiple of `divisor`.

  Narrow copies of the architectures (multiplier < 1) keep the structure of
  the original, so tests can compile every family in seconds.
  """
  if multiplier == 1.0:
    return channels
  return max(divisor, int(round(channels * multiplier / divisor)) * divisor)


# ---------------------------------------------------------------- input checks


def check_images(x: Array, *, model: str, in_channels: int, min_size: int) -> None:
  """Refuses, at trace time, images the architecture cannot take."""
  if x.ndim != 4:
    raise ModelError(
        f"{model} takes NHWC images of shape [batch, height, width, {in_channels}]; "
        f"got shape {tuple(x.shape)} (rank {x.ndim}). Add the batch axis (x[None]) "
        f"or move channels last.")
  if x.shape[-1] != in_channels:
    raise ModelError(
        f"{model} takes {in_channels}-channel images (NHWC); got {x.shape[-1]} "
        f"channels in shape {tuple(x.shape)}. Channels must be the last axis "
        f"(transpose NCHW with x.transpose(0, 2, 3, 1)) or pass in_channels=.")
  height, width = x.shape[1], x.shape[2]
  if height < min_size or width < min_size:
    raise ModelError(
        f"{model} needs images of at least {min_size}x{min_size} pixels (its "
        f"downsampling leaves no spatial extent below that); got {height}x{width}.")


# ------------------------------------------------------------ normalisation


class LocalResponseNorm(nn.Module):
  """Local response normalisation across channels (Krizhevsky et al., 2012).

    b_i = a_i / (k + alpha * sum_{j in window(i, size)} a_j^2) ** beta

  With `alpha_over_size=False` (default) this is the paper's formula, with no
  1/n factor; Caffe's and PyTorch's LRN divide alpha by `size`
  (`alpha_over_size=True`). Computed in float32 whatever the input dtype,
  because the power of a small sum is imprecise in bfloat16.
  """

  size: int = 5
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75
  alpha_over_size: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    squares = jnp.square(x.astype(jnp.float32))
    half = self.size // 2
    window_sum = jax.lax.reduce_window(
        squares, 0.0, jax.lax.add,
        window_dimensions=(1,) * (x.ndim - 1) + (self.size,),
        window_strides=(1,) * x.ndim,
        padding=((0, 0),) * (x.ndim - 1) + ((half, self.size - 1 - half),))
    alpha = self.alpha / self.size if self.alpha_over_size else self.alpha
    denominator = (self.k + alpha * window_sum) ** self.beta
    return (x.astype(jnp.float32) / denominator).astype(x.dtype)


class BatchNorm(nn.Module):
  """BatchNorm whose statistics come from groups of `group_size` examples.

  The batch [B, ...] is reshaped to [B / group_size, group_size, ...] and each
  group is normalised with its own mean and variance, as each GPU normalised
  its own mini-batch in the papers. When the groups align with the
  per-device shards of a batch sharded over devices, no cross-device
  communication is needed. `group_size=None` uses the whole batch, which under
  `jit` with a sharded batch is synchronised BatchNorm.

  Running averages move towards the mean of the groups' statistics with
  `momentum` (new = momentum * old + (1 - momentum) * batch; 0.9 equals
  PyTorch's momentum=0.1). Statistics, running averages and the normalisation
  itself are float32 whatever `dtype`; the output is cast to `dtype`.

  Variables match flax.linen.BatchNorm: params "scale", "bias"; batch_stats
  "mean", "var" (biased variance, like Flax).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: int | None = None
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    features = x.shape[-1]
    mean_stat = self.variable("batch_stats", "mean",
                              lambda: jnp.zeros((features,), jnp.float32))
    var_stat = self.variable("batch_stats", "var",
                             lambda: jnp.ones((features,), jnp.float32))
    scale = (self.param("scale", self.scale_init, (features,), self.param_dtype)
             if self.use_scale else None)
    bias = (self.param("bias", self.bias_init, (features,), self.param_dtype)
            if self.use_bias else None)
    x32 = x.astype(jnp.float32)
    if train:
      batch = x.shape[0]
      group = batch if self.group_size is None else self.group_size
      if group <= 0 or batch % group:
        raise ModelError(
            f"BatchNorm group size {self.group_size} does not divide the batch of "
            f"{batch} examples; choose a bn_group_size that divides the (per-step) "
            f"batch, or None to normalise over the whole batch.")
      grouped = x32.reshape((batch // group, group) + x.shape[1:])
      if kernels.use_cpu_kernels():
        normalized, mean, var = kernels.batch_norm_train(grouped, scale, bias, self.epsilon)
        self._update_statistics(mean_stat, var_stat, mean, var)
        return normalized.reshape(x.shape).astype(self.dtype)
      reduce_axes = tuple(range(1, grouped.ndim - 1))
      mean = jnp.mean(grouped, axis=reduce_axes, keepdims=True)
      var = jnp.mean(jnp.square(grouped - mean), axis=reduce_axes, keepdims=True)
      self._update_statistics(mean_stat, var_stat, mean, var)
      normalized = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    else:
      normalized = (x32 - mean_stat.value) * jax.lax.rsqrt(var_stat.value + self.epsilon)
    if scale is not None:
      normalized = normalized * scale.astype(jnp.float32)
    if bias is not None:
      normalized = normalized + bias.astype(jnp.float32)
    return normalized.astype(self.dtype)

  def _update_statistics(self, mean_stat, var_stat, mean: Array, var: Array) -> None:
    """Moves the running averages towards the mean of the groups' statistics."""
    if not self.is_initializing():
      group_axes = tuple(range(mean.ndim - 1))
      momentum = self.momentum
      mean_stat.value = (momentum * mean_stat.value
                         + (1 - momentum) * jnp.mean(mean, axis=group_axes))
      var_stat.value = (momentum * var_stat.value
                        + (1 - momentum) * jnp.mean(var, axis=group_axes))


# ---------------------------------------------------------------- convolution


class Conv(nn.Conv):
  """`flax.linen.Conv` (same arguments, variables and results) whose 1x1
  convolutions run as a channel matmul when `kernels.use_cpu_kernels()`.

  Every model builds its convolutions from this class; any other kernel size,
  grouped or dilated convolutions and masked kernels go to flax, through
  `kernels.conv_general_dilated` (barriered gradients on CPU).
  """

  conv_general_dilated: Any = kernels.conv_general_dilated

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    kernel_size = (tuple(self.kernel_size) if isinstance(self.kernel_size, Sequence)
                   else (self.kernel_size,))
    strides = self.strides if self.strides is not None else 1
    strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
    if (inputs.ndim != 4 or self.mask is not None or len(strides) != 2
        or not kernels.conv_is_pointwise(kernel_size, self.padding, self.feature_group_count,
                                         self.input_dilation, self.kernel_dilation)
        or not kernels.use_cpu_kernels()):
      return super().__call__(inputs)
    kernel = self.param("kernel", self.kernel_init, (1, 1, inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = kernels.pointwise_conv(inputs, kernel, strides)
    return y if bias is None else y + bias


# --------------------------------------------------------- conv-norm-act unit


class ConvNormAct(nn.Module):
  """Convolution, optional normalisation, optional activation.

  `conv` and `norm` are partials (of nn.Conv and BatchNorm) built once by the
  model, carrying dtype, initialisers and BatchNorm settings. Variables live
  under "conv" and "bn". `norm_scale_init` overrides the BatchNorm scale
  initialiser for this one layer (zero-initialised residual branches).
  """

  features: int
  kernel_size: Sequence[int]
  conv: ModuleDef
  strides: Sequence[int] | int = 1
  padding: Any = "SAME"
  feature_group_count: int = 1
  norm: ModuleDef | None = None
  act: Callable[[Array], Array] | None = nn.relu
  norm_scale_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    strides = self.strides
    if isinstance(strides, int):
      strides = (strides, strides)
    x = self.conv(self.features, tuple(self.kernel_size), strides=tuple(strides),
                  padding=self.padding, feature_group_count=self.feature_group_count,
                  name="conv")(x)
    if self.norm is not None:
      norm_kwargs = {}
      if self.norm_scale_init is not None:
        norm_kwargs["scale_init"] = self.norm_scale_init
      x = self.norm(name="bn", **norm_kwargs)(x, train=train)
    if self.act is not None:
      x = self.act(x)
    return x


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Padding k // 2 on every side, as Caffe and PyTorch pad their convolutions.

  Flax's "SAME" pads stride-2 layers asymmetrically, which would shift every
  output of a network whose weights were trained with symmetric padding.
  """
  pad = kernel_size // 2
  return ((pad, pad), (pad, pad))


class FullyConnected(nn.Module):
  """A Dense layer that can also run as the convolution it is equivalent to.

  Its kernel is [receptive_h * receptive_w * in_channels, features] (NHWC
  flattening order). Called with `as_conv=False` it flattens a
  [B, receptive_h, receptive_w, C] map and multiplies; with `as_conv=True`
  it reshapes the same kernel to [receptive_h, receptive_w, C, features] and
  slides it over a larger map (VALID), which is the dense evaluation of
  Sermanet et al. and the VGG paper. One parameter tree serves both.
  """

  features: int
  receptive_field: tuple[int, int] = (1, 1)
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, as_conv: bool = False) -> Array:
    in_features = int(np.prod(x.shape[1:])) if not as_conv else (
        self.receptive_field[0] * self.receptive_field[1] * x.shape[-1])
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    if as_conv:
      rh, rw = self.receptive_field
      conv_kernel = kernel.reshape(rh, rw, x.shape[-1], self.features)
      y = jax.lax.conv_general_dilated(
          x, conv_kernel, window_strides=(1, 1), padding="VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      y = x.reshape(x.shape[0], -1) @ kernel
    return y + bias.astype(self.dtype)


# ------------------------------------------------------------------- pooling


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int],
             padding: str | Sequence[tuple[int, int]] = "VALID") -> Array:
  """`flax.linen.max_pool` of NHWC maps; on CPU with an argmax-routed gradient
  (`kernels.max_pool`: same values, same gradients, faster there)."""
  if kernels.use_cpu_kernels() and x.ndim == 4 and window[0] * window[1] <= 127:
    return kernels.max_pool(x, window, strides, padding)
  return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)


def max_pool_ceil(x: Array, window: int, stride: int) -> Array:
  """Max pooling whose output size rounds up (Caffe's and PyTorch's ceil_mode).

  out = ceil((in - window) / stride) + 1; the extra window reaches past the
  bottom/right edge, where the input counts as -inf. GoogLeNet's sizes
  112 -> 56 -> 28 -> 14 -> 7 need it.
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    # PyTorch drops a last window that would start in the padding only.
    if (out - 1) * stride >= size:
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return max_pool(x, (window, window), (stride, stride), tuple(pads))


def adaptive_avg_pool(x: Array, output_size: tuple[int, int]) -> Array:
  """PyTorch's AdaptiveAvgPool2d for NHWC maps.

  Output cell i averages input rows floor(i * H / h) .. ceil((i + 1) * H / h);
  written as two small averaging matrices so it is one einsum. An input that
  already has the output size is returned unchanged.
  """
  in_h, in_w = x.shape[1], x.shape[2]
  if (in_h, in_w) == tuple(output_size):
    return x

  def averaging_matrix(in_size: int, out_size: int) -> np.ndarray:
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
      start = (i * in_size) // out_size
      stop = -(-((i + 1) * in_size) // out_size)
      matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix

  rows = jnp.asarray(averaging_matrix(in_h, output_size[0]), x.dtype)
  cols = jnp.asarray(averaging_matrix(in_w, output_size[1]), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


def global_avg_pool(x: Array) -> Array:
  """Mean over the spatial axes, in float32 for accuracy: [B, H, W, C] -> [B, C]."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def norm_partial(*, use_norm: bool, group_size: int | None, momentum: float,
                 epsilon: float, dtype: Any, param_dtype: Any) -> ModuleDef | None:
  """The BatchNorm partial a model injects into its blocks (None without BN)."""
  if not use_norm:
    return None
  if not 0.0 <= momentum < 1.0:
    raise ModelError(f"bn_momentum={momentum!r} must be in [0, 1): the running averages keep "
                     f"this fraction each step (0.9 = PyTorch's momentum=0.1).")
  if not epsilon > 0.0:
    raise ModelError(f"bn_epsilon={epsilon!r} must be > 0 (it keeps 1/sqrt(var + eps) finite); "
                     f"the papers' networks use 1e-5 (1e-3 for GoogLeNet-BN).")
  if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
    raise ModelError(f"bn_group_size={group_size!r} must be a positive number of examples "
                     f"per BatchNorm group, or None for the whole batch.")
  return functools.partial(BatchNorm, momentum=momentum, epsilon=epsilon,
                           group_size=group_size, dtype=dtype, param_dtype=param_dtype)


def check_choice(option: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ModelError naming the allowed values when `value` is not one of them."""
  if value not in allowed:
    raise ModelError(
        f"{option}={value!r} is not an allowed value; choose one of "
        f"{', '.join(repr(a) for a in allowed)}.")
