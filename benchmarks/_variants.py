"""Model-level variants the train-step benchmark can measure (`--patch NAME`).

A jax worker starts as train.py does: `cnnjax.xla_cpu.configure_process()`
(tuned XLA:CPU flags, malloc settings) and the model parts of
config.model.cpu_kernels="auto" (`cnnjax.models.cpu.parts()` on the CPU backend).
Each variant changes one of these, or swaps one building block, inside its
worker process only, keeping the variable tree (names, shapes) unchanged, so
the same step, state and batch run with and without it. A variant that
helps and gives the same numbers (`--check_numerics`) is a candidate for
the models themselves. Nothing here is imported by the library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Parts = dict[str, Any]  # model options passed to cnnjax.models.create (conv, norm)


@dataclasses.dataclass(frozen=True)
class Variant:
  description: str
  # Environment variables the worker process starts with: the harness sets them
  # when it spawns the worker, so settings read at start-up (glibc, XLA) take effect.
  environment: tuple[tuple[str, str], ...] = ()
  # The worker's config.model.cpu_kernels policy ("auto" unless a variant sets it).
  cpu_kernels: str | None = None
  # Edits the model parts the worker passes to cnnjax.models.create.
  edit_parts: Callable[[Parts], Parts] | None = None


def _stem_space_to_depth(parts: Parts) -> Parts:
  """A stride-2 k x k convolution on a few input channels as a stride-1 one on 2x2 blocks.

  The 7x7/2 stem convolution on 3 channels keeps the vector units mostly idle.
  Rearranging the padded image into 2x2 pixel blocks (12 channels at half the
  resolution) and the kernel into ceil(k/2) x ceil(k/2) taps over those blocks
  (zeros where 2m + p > k - 1) gives exactly the same sums with 4x the input
  channels (the MLPerf ResNet "space-to-depth" stem). The kernel variable is
  unchanged; its rearrangement is part of the traced function.
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  original_conv = parts.get("conv", nn.Conv)

  class SpaceToDepthStemConv(original_conv):

    @nn.compact
    def __call__(self, inputs):
      kernel_size = tuple(self.kernel_size)
      strides = self.strides if self.strides is not None else 1
      strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
      padding = self.padding
      applies = (inputs.ndim == 4 and inputs.shape[-1] <= 4 and strides == (2, 2)
                 and kernel_size[0] == kernel_size[1] and kernel_size[0] > 2
                 and self.feature_group_count == 1 and not isinstance(padding, str)
                 and self.kernel_dilation in (None, 1, (1, 1)))
      if not applies:
        return super().__call__(inputs)
      (top, bottom), (left, right) = padding
      size, in_features = kernel_size[0], inputs.shape[-1]
      kernel = self.param("kernel", self.kernel_init, (size, size, in_features, self.features),
                          self.param_dtype)
      dtype = self.dtype or inputs.dtype
      batch, height, width, _ = inputs.shape
      out_h = (height + top + bottom - size) // 2 + 1
      out_w = (width + left + right - size) // 2 + 1
      taps = (size + 1) // 2
      # Pad so the padded image holds exactly (out + taps - 1) 2x2 blocks per side.
      rows, cols = 2 * (out_h + taps - 1), 2 * (out_w + taps - 1)
      padded = jnp.pad(inputs.astype(dtype),
                       ((0, 0), (top, rows - height - top), (left, cols - width - left), (0, 0)))
      blocks = padded.reshape(batch, rows // 2, 2, cols // 2, 2, in_features)
      blocks = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows // 2, cols // 2,
                                                          4 * in_features)
      wide = jnp.pad(kernel.astype(dtype), ((0, 2 * taps - size), (0, 2 * taps - size),
                                            (0, 0), (0, 0)))
      wide = wide.reshape(taps, 2, taps, 2, in_features, self.features)
      wide = wide.transpose(0, 2, 1, 3, 4, 5).reshape(taps, taps, 4 * in_features,
                                                      self.features)
      y = jax.lax.conv_general_dilated(blocks, wide, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=self.precision)
      if self.use_bias:
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        y = y + bias.astype(dtype)
      return y

  return {**parts, "conv": SpaceToDepthStemConv}


def _without(part: str) -> Callable[[Parts], Parts]:
  """Drops one CPU part, so the model takes that option's default."""
  def edit(parts: Parts) -> Parts:
    return {key: value for key, value in parts.items() if key != part}
  return edit


# Read by the jax worker: feed uint8 images and run the photometric
# distortions + normalisation inside the step (augment_kwargs photometric="device").
DEVICE_PHOTOMETRIC_ENV = "CNNJAX_BENCH_DEVICE_PHOTOMETRIC"

VARIANTS: dict[str, Variant] = {
    # The default graph (what a model is without cnnjax.models.cpu.parts()):
    # 1x1 convolutions as convolutions, two-pass BatchNorm, select-and-scatter
    # max-pool gradients. Measures what the CPU parts buy on CPU.
    "lax_kernels": Variant(
        "cpu_kernels=off: the default graph (plain lax convolutions, two-pass BatchNorm, "
        "select-and-scatter max pooling)", cpu_kernels="off"),
    # The CPU parts on any backend, to measure them where "auto" leaves them off (GPU, TPU).
    "cpu_kernels": Variant("cpu_kernels=on: the CPU parts on any backend", cpu_kernels="on"),
    # One CPU part at a time: what each buys on top of the other.
    "default_conv": Variant("the CPU parts with flax's nn.Conv (plain 1x1 and k x k "
                            "convolutions)", edit_parts=_without("conv")),
    "default_norm": Variant("the CPU parts with the two-pass BatchNorm",
                            edit_parts=_without("norm")),
    # XLA's own CPU options: the worker adds none of cnnjax.xla_cpu's flags.
    "xla_defaults": Variant(
        "CNNJAX_XLA_CPU_FLAGS=off: none of cnnjax.xla_cpu's tuned XLA:CPU flags",
        environment=(("CNNJAX_XLA_CPU_FLAGS", "off"),)),
    "stem_space_to_depth": Variant(
        "stride-2 convolutions on <= 4 channels (the stem) over 2x2 pixel blocks",
        edit_parts=_stem_space_to_depth),
    # glibc malloc's own settings (what a process gets that does not call
    # cnnjax.xla_cpu.configure_process): XLA's per-execution buffers are
    # unmapped when freed and faulted in again every step.
    "glibc_malloc": Variant(
        "CNNJAX_CPU_MALLOC=off: glibc's malloc defaults (freed blocks go back to the OS)",
        environment=(("CNNJAX_CPU_MALLOC", "off"),)),
    # The input-side option for accelerators: what the distortions cost inside
    # the step (real train step only).
    "device_photometric": Variant(
        "uint8 batch; brightness/contrast/saturation/hue + ImageNet normalisation in the step",
        environment=((DEVICE_PHOTOMETRIC_ENV, "on"),)),
}


def environment(names: list[str]) -> dict[str, str]:
  """The start-up environment the named variants need."""
  return {key: value for name in names if name in VARIANTS
          for key, value in VARIANTS[name].environment}


def check(names: list[str]) -> list[str]:
  """The names, each a known variant (ValueError otherwise)."""
  for name in names:
    if name not in VARIANTS:
      raise ValueError(f"unknown patch {name!r}; choose from {', '.join(VARIANTS)}")
  return list(names)


def model_parts(names: list[str], backend: str) -> Parts:
  """The parts a worker passes to cnnjax.models.create under the named variants:
  config.model.cpu_kernels's rule ("auto" unless a variant sets it), then each
  variant's edit. Called after JAX is imported, before a model is built."""
  from cnnjax.models import cpu  # pylint: disable=import-outside-toplevel
  policy = "auto"
  for name in check(names):
    policy = VARIANTS[name].cpu_kernels or policy
  parts = cpu.parts() if cpu.wanted(policy, backend) else {}
  for name in names:
    if VARIANTS[name].edit_parts is not None:
      parts = VARIANTS[name].edit_parts(parts)
  return parts
