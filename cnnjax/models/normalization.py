"""Normalisation layers and how a model injects them into its blocks.

`LocalResponseNorm` (AlexNet, VGG A-LRN, GoogLeNet) and `BatchNorm` (grouped
statistics, float32 whatever the compute dtype) are the project's own.
A model's `norm` option may also be any flax normalisation class or partial
(`nn.GroupNorm`, `nn.LayerNorm`, `nn.BatchNorm`, `cnnjax.models.cpu.BatchNorm`):
`norm_factory` fills in the settings the model decides once (dtype, and the
BatchNorm settings for BatchNorms) and `apply_norm` passes the train-mode
argument only to the norms whose call takes one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ModelError
from cnnjax.models.injection import ModuleDef, module_class, with_defaults

Array = jax.Array
Initializer = Callable[..., Array]


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
  "mean", "var" (biased variance, like Flax). Subclasses change how a group
  is normalised in training (`normalize_groups`), e.g. `cnnjax.models.cpu.BatchNorm`.
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
    if not train:
      normalized = (x32 - mean_stat.value) * jax.lax.rsqrt(var_stat.value + self.epsilon)
      return _affine(normalized, scale, bias).astype(self.dtype)
    batch = x.shape[0]
    group = batch if self.group_size is None else self.group_size
    if group <= 0 or batch % group:
      raise ModelError(
          f"BatchNorm group size {self.group_size} does not divide the batch of "
          f"{batch} examples; choose a bn_group_size that divides the (per-step) "
          f"batch, or None to normalise over the whole batch.")
    grouped = x32.reshape((batch // group, group) + x.shape[1:])
    normalized, mean, var = self.normalize_groups(grouped, scale, bias)
    if not self.is_initializing():
      group_axes = tuple(range(mean.ndim - 1))
      momentum = self.momentum
      mean_stat.value = (momentum * mean_stat.value
                         + (1 - momentum) * jnp.mean(mean, axis=group_axes))
      var_stat.value = (momentum * var_stat.value
                        + (1 - momentum) * jnp.mean(var, axis=group_axes))
    return normalized.reshape(x.shape).astype(self.dtype)

  def normalize_groups(self, grouped: Array, scale: Array | None,
                       bias: Array | None) -> tuple[Array, Array, Array]:
    """Training-mode normalisation of float32 [groups, group_size, ..., C].

    Returns (normalised with scale and bias, mean, var); mean and var keep
    the reduced axes. Two passes: the mean, then the centred variance.
    """
    reduce_axes = tuple(range(1, grouped.ndim - 1))
    mean = jnp.mean(grouped, axis=reduce_axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=reduce_axes, keepdims=True)
    normalized = (grouped - mean) * jax.lax.rsqrt(var + self.epsilon)
    return _affine(normalized, scale, bias), mean, var


def _affine(normalized: Array, scale: Array | None, bias: Array | None) -> Array:
  if scale is not None:
    normalized = normalized * scale.astype(jnp.float32)
  if bias is not None:
    normalized = normalized + bias.astype(jnp.float32)
  return normalized


# ------------------------------------------------------- injected norms


def norm_factory(norm: ModuleDef | None, *, group_size: int | None, momentum: float,
                 epsilon: float, dtype: Any, param_dtype: Any) -> ModuleDef | None:
  """The partial of `norm` a model injects into its blocks (None for no norm).

  The model's dtype and param_dtype go to every norm that has those fields;
  bn_momentum and bn_epsilon to BatchNorms (the project's, its subclasses and
  flax's), bn_group_size to the project's. A setting the partial already
  fixes is left as the caller wrote it.
  """
  if norm is None:
    return None
  if not callable(norm):
    raise ModelError(f"norm={norm!r} is not a module class or partial; pass e.g. "
                     f"cnnjax.models.layers.BatchNorm, functools.partial(nn.GroupNorm, "
                     f"num_groups=8), nn.LayerNorm or None.")
  cls = module_class(norm)
  settings: dict[str, Any] = {"dtype": dtype, "param_dtype": param_dtype}
  if isinstance(cls, type) and issubclass(cls, BatchNorm):
    settings.update(momentum=momentum, epsilon=epsilon, group_size=group_size)
  elif isinstance(cls, type) and issubclass(cls, nn.BatchNorm):
    settings.update(momentum=momentum, epsilon=epsilon)
  return with_defaults(norm, **settings)


@functools.lru_cache(maxsize=None)
def _train_argument(cls: Any) -> str | None:
  """The keyword of `cls.__call__` that selects training mode, if it has one."""
  try:
    parameters = inspect.signature(cls.__call__).parameters
  except (TypeError, ValueError):
    return None
  for name in ("train", "use_running_average", "deterministic"):
    if name in parameters:
      return name
  return None


def apply_norm(norm: nn.Module, x: Array, train: bool) -> Array:
  """Calls a norm module with the train-mode argument its call takes, if any.

  The project's BatchNorm takes `train`; flax's BatchNorm takes
  `use_running_average` (= not train); GroupNorm and LayerNorm take none.
  """
  argument = _train_argument(type(norm))
  if argument is None:
    return norm(x)
  return norm(x, **{argument: train if argument == "train" else not train})
