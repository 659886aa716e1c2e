"""Pooling of NHWC maps: max (the models' `max_pool` option), ceil-mode max,
PyTorch's adaptive average and global average pooling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Padding = str | Sequence[tuple[int, int]]
# (x, window, strides, padding) -> pooled x: the signature of a model's `max_pool` option.
MaxPool = Callable[[Array, Sequence[int], Sequence[int], Padding], Array]


def max_pool(x: Array, window: Sequence[int], strides: Sequence[int],
             padding: Padding = "VALID") -> Array:
  """`flax.linen.max_pool` of NHWC maps (padding counts as -inf)."""
  return nn.max_pool(x, tuple(window), strides=tuple(strides), padding=padding)


def max_pool_ceil(x: Array, window: int, stride: int, pool: MaxPool = max_pool) -> Array:
  """Max pooling whose output size rounds up (Caffe's and PyTorch's ceil_mode).

  out = ceil((in - window) / stride) + 1; the extra window reaches past the
  bottom/right edge, where the input counts as -inf. GoogLeNet's sizes
  112 -> 56 -> 28 -> 14 -> 7 need it. `pool` computes the padded pooling.
  """
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    # PyTorch drops a last window that would start in the padding only.
    if (out - 1) * stride >= size:
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return pool(x, (window, window), (stride, stride), tuple(pads))


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
