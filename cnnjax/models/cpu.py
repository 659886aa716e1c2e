"""The CPU parts: modules that make a model's train step faster on XLA:CPU.

    from cnnjax.models import cpu
    model = cnnjax.models.create("resnet50", **cpu.parts())
    # = create("resnet50", conv=cpu.Conv, norm=cpu.BatchNorm)

A model's graph is the same on every backend unless its caller passes these
(`cnnjax.train.setup.create_model` does when the process runs on the CPU
backend, config key `cpu_kernels`). They compute what the default parts
compute (same variables, same values, same gradients up to float rounding;
tests/models/test_cpu_parts.py) with the formulations of
`cnnjax.models.kernels`:

- `Conv`: flax's nn.Conv (same arguments and variables) whose 1x1
  convolutions run as a channel matmul and whose other convolutions read
  their operands through an optimization barrier in the backward pass;
- `BatchNorm`: the project's BatchNorm with one-pass statistics and the
  scale and bias folded into one multiply-add.

Max pooling keeps the default graph's (an argmax-routed gradient measured
no faster; RESULTS.md, "Model graph: default vs CPU parts").

The convolutions' custom VJPs support reverse-mode differentiation only:
`jax.jvp` and `jax.jacfwd` need the default parts. Measured on a 2-core CPU
(ResNet-50 v1.5 train step, batch 16, 224 px; benchmarks/RESULTS.md): `Conv`
1.51x and `BatchNorm` 1.34x, both 1.61x, in one interleaved run on top of
the XLA flags and malloc settings (earlier: the channel matmul 1.58x, the
one-pass BatchNorm 1.18x, the barriered convolutions 1.04-1.05x).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from cnnjax.errors import ModelError
from cnnjax.models import kernels
from cnnjax.models.normalization import BatchNorm as _BatchNorm

Array = jax.Array
POLICIES = ("auto", "on", "off")


class Conv(nn.Conv):
  """`flax.linen.Conv` (same arguments, variables and results), CPU-formulated.

  A plain 1x1 convolution (no padding, groups, dilation or mask) is one
  [pixels, C_in] x [C_in, C_out] matmul (`kernels.pointwise_conv`); any
  other goes to flax with `kernels.conv_general_dilated` (barriered
  gradients, stride-2 input gradients as four phase convolutions).
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
                                         self.input_dilation, self.kernel_dilation)):
      return super().__call__(inputs)
    kernel = self.param("kernel", self.kernel_init, (1, 1, inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = kernels.pointwise_conv(inputs, kernel, strides)
    return y if bias is None else y + bias


class BatchNorm(_BatchNorm):
  """The project's BatchNorm (same fields, variables and statistics) whose
  training-mode normalisation is `kernels.batch_norm_train`: one pass for
  E[x] and E[x^2], then one multiply-add per element."""

  def normalize_groups(self, grouped: Array, scale: Array | None,
                       bias: Array | None) -> tuple[Array, Array, Array]:
    return kernels.batch_norm_train(grouped, scale, bias, self.epsilon)


def parts() -> dict[str, Any]:
  """The model options that select the CPU parts: conv and norm."""
  return {"conv": Conv, "norm": BatchNorm}


def wanted(policy: str, backend: str) -> bool:
  """Whether `policy` ("auto", "on", "off") selects the CPU parts on `backend`
  ("auto": on the "cpu" backend only). Decided by the caller, outside any trace."""
  if policy not in POLICIES:
    raise ModelError(f"cpu_kernels={policy!r} is not one of {', '.join(POLICIES)} "
                     f"(auto: the CPU parts on the CPU backend only).")
  return policy == "on" or (policy == "auto" and backend == "cpu")
