"""Building blocks shared by every model family.

Everything a family needs to vary by name lives here as a table: activations
(`ACTIVATIONS`), initialisers (`INITIALIZERS`). Convolution, normalisation and
activation are combined by `ConvNormAct`, which receives its convolution and
normalisation as partials, so a model decides dtype, initialisers and
BatchNorm settings once, at the top, and every block inherits them.
Normalisation layers live in `normalization`, pooling in `pooling`; both are
re-exported here.

This module, like all of `cnnjax.models`, needs only jax and flax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
from flax.linen import kw_only_dataclasses
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ModelError, close_matches
from cnnjax.models.injection import ModuleDef, with_defaults
from cnnjax.models.normalization import (BatchNorm, Initializer, LocalResponseNorm, apply_norm,
                                         norm_factory)
from cnnjax.models import options, pooling
from cnnjax.models.pooling import adaptive_avg_pool, global_avg_pool, max_pool, max_pool_ceil

__all__ = [
    "ACTIVATIONS", "INITIALIZERS", "BatchNorm", "ConvNet", "ConvNormAct", "FullyConnected",
    "LocalResponseNorm", "activation", "adaptive_avg_pool", "binary_step", "check_images",
    "global_avg_pool", "initializer", "max_pool", "max_pool_ceil", "norm_factory",
    "scaled_channels", "symmetric_padding", "with_defaults",
]

Array = jax.Array


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


def activation(name: str | Callable[[Array], Array]) -> Callable[[Array], Array]:
  """The activation function called `name` (one of `ACTIVATIONS`); a callable as given."""
  if callable(name):
    return name
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
    # All zeros: a classifier that starts at uniform posteriors (loss ln C)
    # whatever the scale of its input features.
    "zeros": nn.initializers.zeros,
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


# --------------------------------------------------------- conv-norm-act unit


class ConvNormAct(nn.Module):
  """Convolution, optional normalisation, optional activation.

  `conv` and `norm` are partials built once by the model, carrying dtype,
  initialisers and normalisation settings. `conv` is called like flax's
  nn.Conv: (features, kernel_size, strides=, padding=, feature_group_count=).
  `norm` gets the train-mode argument its call takes (see
  `normalization.apply_norm`). Variables live under "conv" and "bn".
  `norm_scale_init` overrides the norm's scale initialiser for this one
  layer (zero-initialised residual branches).
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
      if self.norm_scale_init is not None:  # the model checked that the norm takes it
        norm_kwargs["scale_init"] = self.norm_scale_init
      x = apply_norm(self.norm(name="bn", **norm_kwargs), x, train)
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


# ------------------------------------------------------- the families' base


def keyword_field(default: Any) -> Any:
  """A keyword-only field, so each family's own fields keep their positions
  (a family that changes a shared default redeclares it with this too)."""
  return kw_only_dataclasses.field(default=default, kw_only=True)


class ConvNet(nn.Module):
  """The fields every family shares: its injectable parts and their settings.

  `activation`: a name from `ACTIVATIONS` or any callable. `conv`: a module
  class or partial called like nn.Conv. `norm`: the normalisation after each
  convolution where `use_bn` (a class or partial: the project's BatchNorm,
  `cnnjax.models.cpu.BatchNorm`, flax's BatchNorm, GroupNorm, LayerNorm...;
  None for none). `max_pool`: (x, window, strides, padding) -> pooled x.
  `cnnjax.models.cpu.parts()` are faster on XLA:CPU. Keyword-only.
  """

  activation: str | Callable[[Array], Array] = keyword_field("relu")
  conv: ModuleDef = keyword_field(nn.Conv)
  norm: ModuleDef | None = keyword_field(BatchNorm)
  max_pool: pooling.MaxPool = keyword_field(pooling.max_pool)
  use_bn: bool = keyword_field(False)
  bn_group_size: int | None = keyword_field(None)
  bn_momentum: float = keyword_field(0.9)
  bn_epsilon: float = keyword_field(1e-5)
  dtype: Any = keyword_field(jnp.float32)
  param_dtype: Any = keyword_field(jnp.float32)

  def __post_init__(self) -> None:
    # Every option is checked once, when the module is built (by `create` or directly).
    options.check_module(self)
    super().__post_init__()

  def checked_activation(self, x: Array, *, model: str, min_size: int) -> Callable:
    """Checks the images (at trace time); the activation function."""
    check_images(x, model=model, in_channels=getattr(self, "in_channels", 3),
                 min_size=min_size)
    return activation(self.activation)

  def norm_part(self) -> ModuleDef | None:
    """The norm partial the blocks get (None without normalisation)."""
    return norm_factory(self.norm if self.use_bn else None, group_size=self.bn_group_size,
                        momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                        param_dtype=self.param_dtype)

  def conv_part(self, kernel_init: str, **settings: Any) -> ModuleDef:
    """The conv partial the blocks get: the model's dtypes and initialiser, and
    `settings` (use_bias, bias_init), where the caller's partial leaves them open."""
    return with_defaults(self.conv, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=initializer(kernel_init), **settings)
