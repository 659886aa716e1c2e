"""AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) and torchvision's single tower.

Both networks are the same module, `AlexNet`, reading a layer table:

* `ALEXNET_2012` ("alexnet"): the paper's network. The two-GPU split is
  expressed as grouped convolutions (feature_group_count=2) in conv2, conv4
  and conv5, which gives the published 60,965,224 parameters. ReLU, LRN with
  the paper's formula (k=2, n=5, alpha=1e-4, beta=0.75, no 1/n) after conv1
  and conv2, overlapping 3x3/2 max pooling (`pool_window`, `pool_stride`), dropout 0.5 on the outputs of fc6
  and fc7, N(0, 0.01) weights, biases 1 in conv2, conv4, conv5, fc6, fc7.
* `ALEXNET_TORCHVISION` ("alexnet_v2"): Krizhevsky's 2014 "one weird trick"
  single tower as in torchvision: 64/192/384/256/256 channels, no LRN, no
  groups, adaptive average pool to 6x6, dropout before fc6 and fc7;
  61,100,840 parameters. Layer order and padding match torchvision's
  `features`/`classifier` so its weights can be imported.

Parts: `activation` (a name or any callable), `conv` (called like nn.Conv),
`max_pool` (the pooling function), and `norm` after every convolution when
`use_bn=True` (off in both published networks; the convolutions then lose
their biases); `cnnjax.models.cpu.parts()` are faster on XLA:CPU.

conv1 is 11x11/4 with padding 2, so a 224 input (or 227) gives 55x55 maps
and pool5 is 6x6. Variables: `conv{1..5}/conv/{kernel,bias}`, `fc6`, `fc7`,
`fc8` (each `{kernel, bias}`; fc6's kernel rows are in NHWC flattening order
h, w, c -- torchvision's are c, h, w). Features: "conv1".."conv5" (each
stage's output after its pooling), "fc6", "fc7", "pre_logits" (= fc7 after
ReLU, before dropout: the 4096-d embedding).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ModelError
from cnnjax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One row of the layer table: a convolution and what follows it."""

  name: str
  features: int
  kernel: int
  stride: int
  padding: int
  groups: int = 1
  lrn: bool = False  # response normalisation after the ReLU
  pool: bool = False  # 3x3/2 max pooling after that
  bias: float = 0.0  # initial bias


ALEXNET_2012: tuple[ConvLayer, ...] = (
    ConvLayer("conv1", 96, 11, 4, 2, groups=1, lrn=True, pool=True, bias=0.0),
    ConvLayer("conv2", 256, 5, 1, 2, groups=2, lrn=True, pool=True, bias=1.0),
    ConvLayer("conv3", 384, 3, 1, 1, groups=1, bias=0.0),
    ConvLayer("conv4", 384, 3, 1, 1, groups=2, bias=1.0),
    ConvLayer("conv5", 256, 3, 1, 1, groups=2, pool=True, bias=1.0),
)

ALEXNET_TORCHVISION: tuple[ConvLayer, ...] = (
    ConvLayer("conv1", 64, 11, 4, 2, pool=True),
    ConvLayer("conv2", 192, 5, 1, 2, pool=True),
    ConvLayer("conv3", 384, 3, 1, 1),
    ConvLayer("conv4", 256, 3, 1, 1),
    ConvLayer("conv5", 256, 3, 1, 1, pool=True),
)

POOL_WINDOW, POOL_STRIDE = 3, 2  # overlapping pooling (s < z)
POOL5_SIZE = 6


def _pooled_size(size: int, table: Sequence[ConvLayer], window: int = POOL_WINDOW,
                 stride: int = POOL_STRIDE) -> int:
  for row in table:
    size = (size + 2 * row.padding - row.kernel) // row.stride + 1
    if row.pool:
      size = (size - window) // stride + 1
    if size < 1:
      return 0
  return size


class AlexNet(layers.ConvNet):
  """AlexNet-style network read from a `ConvLayer` table (the parts: `layers.ConvNet`'s
  fields; `use_bn` is off in both published networks)."""

  conv_layers: Sequence[ConvLayer] = ALEXNET_2012
  num_classes: int = 1000
  in_channels: int = 3
  width_multiplier: float = 1.0  # scales every conv and the FC widths (tests)
  fc_features: int = 4096
  lrn: bool = True  # False drops every LRN of the table
  dropout_rate: float = 0.5
  dropout_before_fc: bool = False  # torchvision: dropout on the inputs of fc6, fc7
  fc_bias: float = 1.0  # initial bias of fc6 and fc7
  adaptive_pool: bool = True  # average pool5 to 6x6 for inputs other than 224..227
  # Max pooling window z and stride s: the paper's overlapping 3x3/2 (s < z); 2x2/2 is
  # its non-overlapping control, which gives maps of the same size (Sec. 3.4).
  pool_window: int = POOL_WINDOW
  pool_stride: int = POOL_STRIDE
  kernel_init: str = "gaussian"
  dense_init: str = "gaussian"

  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "activation": tuple(layers.ACTIVATIONS),
      "kernel_init": tuple(layers.INITIALIZERS),
      "dense_init": tuple(layers.INITIALIZERS),
  }

  @property
  def min_image_size(self) -> int:
    return next(n for n in range(1, 1024) if _pooled_size(
        n, self.conv_layers, self.pool_window, self.pool_stride) >= 1)

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    act = self.checked_activation(x, model="AlexNet", min_size=self.min_image_size)
    norm = self.norm_part()
    feats: dict[str, Array] = {}
    x = x.astype(self.dtype)
    for row in self.conv_layers:
      conv = self.conv_part(self.kernel_init, use_bias=norm is None,
                            bias_init=nn.initializers.constant(row.bias))
      x = layers.ConvNormAct(
          layers.scaled_channels(row.features, self.width_multiplier, row.groups),
          (row.kernel, row.kernel), conv=conv, strides=row.stride,
          padding=((row.padding, row.padding),) * 2, feature_group_count=row.groups,
          norm=norm, act=act, name=row.name)(x, train)
      if row.lrn and self.lrn:
        x = layers.LocalResponseNorm(size=5, k=2.0, alpha=1e-4, beta=0.75)(x)
      if row.pool:
        x = self.max_pool(x, (self.pool_window,) * 2, (self.pool_stride,) * 2)
      feats[row.name] = x

    if x.shape[1:3] != (POOL5_SIZE, POOL5_SIZE):
      if not self.adaptive_pool:
        raise ModelError(
            f"AlexNet's fc6 takes the 6x6 map of a 224..227-pixel image; this input "
            f"gives {x.shape[1]}x{x.shape[2]}. Resize the images or pass adaptive_pool=True.")
      x = layers.adaptive_avg_pool(x, (POOL5_SIZE, POOL5_SIZE))

    fc_width = layers.scaled_channels(self.fc_features, self.width_multiplier)
    dense = functools.partial(layers.FullyConnected, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              kernel_init=layers.initializer(self.dense_init))
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = x.reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      if self.dropout_before_fc:
        x = dropout(x)
      x = act(dense(fc_width, bias_init=nn.initializers.constant(self.fc_bias),
                    name=name)(x))
      feats[name] = x
      if not self.dropout_before_fc:
        x = dropout(x)
    feats["pre_logits"] = feats["fc7"]
    logits = dense(self.num_classes, name="fc8")(x).astype(jnp.float32)
    return (logits, feats) if features else logits


def _register_all() -> None:
  from cnnjax.models.registry import ModelSpec, register  # pylint: disable=import-outside-toplevel
  register("alexnet", ModelSpec(
      AlexNet, {"conv_layers": ALEXNET_2012}, "alexnet",
      description="AlexNet 2012: two-GPU split as groups=2, LRN, 60.97M params"))
  register("alexnet_v2", ModelSpec(
      AlexNet, {"conv_layers": ALEXNET_TORCHVISION, "lrn": False, "dropout_before_fc": True,
                "fc_bias": 0.0, "kernel_init": "glorot", "dense_init": "glorot"},
      "alexnet", description="torchvision's single-tower AlexNet (2014), 61.10M params"))


_register_all()
