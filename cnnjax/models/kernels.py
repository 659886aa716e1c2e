"""Formulations of convolution, pooling and BatchNorm that XLA:CPU runs faster.

Each function here computes exactly what its plain `jax.lax` counterpart
computes (same values, same gradients up to float rounding, the same
tie-breaking), arranged so that XLA's CPU backend picks fast kernels:

- `pointwise_conv`: a 1x1 convolution as one [pixels, C_in] x [C_in, C_out]
  matmul. XLA:CPU otherwise computes a 1x1 convolution's kernel gradient as a
  convolution whose window is the whole feature map, over activations it first
  transposes to [C, H, W, N] (with the BatchNorm/ReLU backward fused into the
  transpose, read column-wise): ~7x slower than the matmul.
- `conv_general_dilated`: other convolutions, whose gradients read their
  operands through an optimization barrier (keeps the BatchNorm/ReLU backward
  out of the transposes XLA:CPU puts before a kernel-gradient convolution),
  and whose stride-2 input gradient is four stride-1 phase convolutions
  instead of one over a zero-dilated gradient.
- `batch_norm_train`: one pass for E[x] and E[x^2], then x * a + b with the
  scale and bias folded into per-channel a, b (flax's `use_fast_variance`).
  Measured and rejected (RESULTS.md): two-pass statistics with the folded
  affine (+10% step time), a shifted one-pass form and a closed-form custom
  backward pass (both materialise an extra activation-sized array per layer).

An argmax-routed max-pool gradient was here too; measured within noise of
select-and-scatter, then slower (RESULTS.md, "Model graph: default vs CPU
parts"), it was removed.

These are functions of arrays; `cnnjax.models.cpu` wraps them into the
modules a caller passes to a model (`conv=`, `norm=`). Nothing here looks at the backend: the caller
chooses. Their custom VJPs make them reverse-mode only (no `jax.jvp`).
The measured effect is in benchmarks/RESULTS.md (section train_step).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ModelError

Array = jax.Array


# ------------------------------------------------------------ 1x1 convolution


@jax.custom_vjp
def _channel_matmul(x2d: Array, kernel2d: Array) -> Array:
  return x2d @ kernel2d


def _channel_matmul_fwd(x2d, kernel2d):
  return x2d @ kernel2d, (x2d, kernel2d)


def _channel_matmul_bwd(residuals, grad):
  x2d, kernel2d = residuals
  # The kernel gradient contracts over rows (batch x pixels). Without the
  # barrier XLA fuses the BatchNorm/ReLU backward that produces `grad` into
  # the transpose feeding that contraction, which then reads several large
  # arrays column-wise; with it, both operands are plain row-major buffers.
  x2d, grad = jax.lax.optimization_barrier((x2d, grad))
  grad_x = jax.lax.dot_general(grad, kernel2d.astype(grad.dtype), (((1,), (1,)), ((), ())))
  grad_kernel = jax.lax.dot_general(x2d, grad, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
  return grad_x.astype(x2d.dtype), grad_kernel.astype(kernel2d.dtype)


_channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def pointwise_conv(x: Array, kernel: Array, strides: Sequence[int] = (1, 1)) -> Array:
  """A 1x1 convolution (NHWC input, HWIO kernel [1, 1, C_in, C_out], no padding)."""
  if kernel.shape[:2] != (1, 1) or x.shape[-1] != kernel.shape[2]:
    raise ModelError(f"pointwise_conv needs a [1, 1, {x.shape[-1]}, C_out] kernel for "
                     f"{x.shape[-1]}-channel input; got {tuple(kernel.shape)}.")
  if tuple(strides) != (1, 1):
    x = x[:, ::strides[0], ::strides[1], :]
  batch, height, width, channels = x.shape
  y = _channel_matmul(x.reshape(-1, channels), kernel[0, 0].astype(x.dtype))
  return y.reshape(batch, height, width, -1)


# ------------------------------------------------------ k x k convolutions


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None,
                         preferred_element_type=None) -> Array:
  """`jax.lax.conv_general_dilated` whose gradients read their operands
  through an `optimization_barrier`.

  XLA:CPU computes a kernel gradient as a convolution over transposed
  operands; unbarriered, the BatchNorm/ReLU backward that produces the
  incoming gradient is fused into that transpose. Same values and gradients.
  """
  def conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)

  @jax.custom_vjp
  def barriered(x, kernel):
    return conv(x, kernel)

  def forward(x, kernel):
    return conv(x, kernel), (x, kernel)

  phased = _stride2_input_gradient_applies(lhs, rhs, window_strides, padding, lhs_dilation,
                                           rhs_dilation, dimension_numbers,
                                           feature_group_count, batch_group_count)

  def backward(residuals, grad):
    x, kernel, grad = jax.lax.optimization_barrier((*residuals, grad))
    if not phased:
      return jax.vjp(conv, x, kernel)[1](grad)
    grad_kernel = jax.vjp(lambda k: conv(x, k), kernel)[1](grad)[0]
    return _stride2_input_gradient(grad, kernel, x.shape, padding, precision), grad_kernel

  barriered.defvjp(forward, backward)
  return barriered(lhs, rhs)


def _stride2_input_gradient_applies(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count) -> bool:
  """Whether `_stride2_input_gradient` covers this convolution (NHWC/HWIO, stride 2,
  explicit padding, no dilation or groups, a kernel of at least 2 x 2)."""
  def unit(dilation):
    return dilation is None or all(d == 1 for d in dilation)

  if lhs.ndim != 4 or tuple(window_strides) != (2, 2) or isinstance(padding, str):
    return False
  if not (unit(lhs_dilation) and unit(rhs_dilation)) or feature_group_count != 1:
    return False
  if batch_group_count != 1 or min(rhs.shape[:2]) < 2:
    return False
  expected = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  given = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == expected


def _stride2_input_gradient(grad, kernel, x_shape, padding, precision):
  """The input gradient of a stride-2 NHWC convolution as four stride-1 ones.

  XLA computes it as one convolution over the gradient dilated with zeros,
  three quarters of whose multiply-adds meet a zero. Padded-input row 2m + r
  receives only the kernel rows r, r + 2, ... (from output rows m, m - 1, ...),
  so each of the four (row, column) parities is a stride-1 convolution of the
  gradient with that parity's flipped sub-kernel; the four results interleave.
  """
  (top, bottom), (left, right) = ((int(lo), int(hi)) for lo, hi in padding)
  batch, height, width, channels = x_shape
  padded_h, padded_w = height + top + bottom, width + left + right
  rows, cols = -(-padded_h // 2), -(-padded_w // 2)  # phase sizes (the larger parity)
  out_h, out_w = grad.shape[1:3]
  phases = []
  for r in (0, 1):
    row = []
    for c in (0, 1):
      sub = kernel[r::2, c::2][::-1, ::-1]  # [T_h, T_w, C_in, C_out], flipped
      taps_h, taps_w = sub.shape[:2]
      if taps_h == 0 or taps_w == 0:
        row.append(jnp.zeros((batch, rows, cols, channels), grad.dtype))
        continue
      row.append(jax.lax.conv_general_dilated(
          grad, jnp.swapaxes(sub, 2, 3).astype(grad.dtype), (1, 1),
          ((taps_h - 1, rows - out_h), (taps_w - 1, cols - out_w)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision))
    phases.append(jnp.stack(row, axis=3))  # [N, rows, cols, 2 (c), C]
  interleaved = jnp.stack(phases, axis=2)  # [N, rows, 2 (r), cols, 2 (c), C]
  interleaved = interleaved.reshape(batch, 2 * rows, 2 * cols, channels)
  return interleaved[:, top:top + height, left:left + width, :]


# ------------------------------------------------------------------ BatchNorm


def batch_norm_train(grouped: Array, scale: Array | None, bias: Array | None,
                     epsilon: float) -> tuple[Array, Array, Array]:
  """Training-mode BatchNorm of float32 [groups, group_size, ..., C] activations.

  Returns (normalised, mean, var); mean and var keep the reduced axes. One
  pass computes E[x] and E[x^2] (var = E[x^2] - E[x]^2, clipped at 0: flax's
  `use_fast_variance` formula), and the normalisation is one multiply-add,
  x * a + b with a = scale / sqrt(var + eps), b = bias - mean * a.

  Float32 caveat of the one-pass variance: it loses digits when a channel's
  |mean| is many times its standard deviation, which BatchNorm inputs (conv
  outputs of normalised activations) are not; tests/models/test_cpu_parts.py
  checks the whole network against float64.
  """
  reduce_axes = tuple(range(1, grouped.ndim - 1))
  mean = jnp.mean(grouped, axis=reduce_axes, keepdims=True)
  mean_of_squares = jnp.mean(jnp.square(grouped), axis=reduce_axes, keepdims=True)
  var = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
  multiplier = jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    multiplier = multiplier * scale.astype(jnp.float32)
  offset = -mean * multiplier
  if bias is not None:
    offset = offset + bias.astype(jnp.float32)
  return grouped * multiplier + offset, mean, var


def conv_is_pointwise(kernel_size: Sequence[int], padding, feature_group_count: int,
                      input_dilation, kernel_dilation) -> bool:
  """Whether a flax Conv configuration is a plain 1x1 convolution."""
  def unit(dilation):
    return dilation is None or np.all(np.asarray(dilation) == 1)

  no_padding = (padding in ("VALID", "SAME") if isinstance(padding, str)
                else all(tuple(p) == (0, 0) for p in padding)
                if not isinstance(padding, int) else padding == 0)
  return (tuple(kernel_size) == (1, 1) and feature_group_count == 1 and no_padding
          and unit(input_dilation) and unit(kernel_dilation))
