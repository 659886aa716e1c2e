"""VGG networks A, A-LRN, B, C, D, E (Simonyan & Zisserman, ICLR 2015).

`VGG_TABLE` is the paper's Table 1, column for column: five blocks of
"conv<receptive field>-<channels>" layers (and "LRN" in A-LRN), each block
followed by 2x2/2 max pooling, then FC-4096, FC-4096, FC-1000 with ReLU and
dropout 0.5 after the first two. torchvision's vgg11/13/16/19 are A/B/D/E;
the `*_bn` variants put BatchNorm after every convolution (before the ReLU),
with conv biases kept, as torchvision's vgg*_bn.

Evaluation modes:

* default: pool5 goes through an adaptive average pool to 7x7 (torchvision's
  behaviour; the identity at 224) and the FC layers; `adaptive_pool=False`
  refuses inputs whose pool5 map is not 7x7.
* `fully_convolutional=True`: the paper's dense evaluation. fc6 runs as a
  7x7 convolution, fc7 and fc8 as 1x1 convolutions over the whole image,
  with the SAME parameters (`layers.FullyConnected` reshapes its kernel),
  and the class-score map is averaged spatially. Any input >= 224.

Parts: `activation` (a name or any callable), `conv` (called like nn.Conv),
`norm` (the normalisation of the BN variants, used where use_bn; e.g.
`functools.partial(nn.GroupNorm, num_groups=8)`), `max_pool` (the pooling
function); `cnnjax.models.cpu.parts()` are faster on XLA:CPU.

Variables: `conv{block}_{index}/conv/{kernel,bias}` (+ `/bn/...` in the BN
variants), e.g. conv3_3 is C's 1x1 layer; `fc6`, `fc7`, `fc8` `{kernel,bias}`
(fc6's kernel rows in NHWC order h, w, c). Features: "block1".."block5"
(after each pooling), "fc6", "fc7" (maps in dense mode), "pre_logits"
(fc7 after ReLU, before dropout; spatially averaged in dense mode).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ModelError
from cnnjax.models import layers

Array = jax.Array

# Table 1 of the paper. Each tuple is one block between max-pool layers.
VGG_TABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "A": (("conv3-64",), ("conv3-128",), ("conv3-256", "conv3-256"),
          ("conv3-512", "conv3-512"), ("conv3-512", "conv3-512")),
    "A-LRN": (("conv3-64", "LRN"), ("conv3-128",), ("conv3-256", "conv3-256"),
              ("conv3-512", "conv3-512"), ("conv3-512", "conv3-512")),
    "B": (("conv3-64", "conv3-64"), ("conv3-128", "conv3-128"), ("conv3-256", "conv3-256"),
          ("conv3-512", "conv3-512"), ("conv3-512", "conv3-512")),
    "C": (("conv3-64", "conv3-64"), ("conv3-128", "conv3-128"),
          ("conv3-256", "conv3-256", "conv1-256"),
          ("conv3-512", "conv3-512", "conv1-512"),
          ("conv3-512", "conv3-512", "conv1-512")),
    "D": (("conv3-64", "conv3-64"), ("conv3-128", "conv3-128"),
          ("conv3-256", "conv3-256", "conv3-256"),
          ("conv3-512", "conv3-512", "conv3-512"),
          ("conv3-512", "conv3-512", "conv3-512")),
    "E": (("conv3-64", "conv3-64"), ("conv3-128", "conv3-128"),
          ("conv3-256", "conv3-256", "conv3-256", "conv3-256"),
          ("conv3-512", "conv3-512", "conv3-512", "conv3-512"),
          ("conv3-512", "conv3-512", "conv3-512", "conv3-512")),
}

# Sec. 4.1's control of B: each pair of 3x3 layers replaced by one 5x5 (same receptive
# field; its top-1 error was 7% higher). A `conv_table` for VGG, not a registered name.
VGG_B_5X5: tuple[tuple[str, ...], ...] = (
    ("conv5-64",), ("conv5-128",), ("conv3-256", "conv3-256"),
    ("conv3-512", "conv3-512"), ("conv3-512", "conv3-512"))

FC6_RECEPTIVE_FIELD = 7  # pool5 of a 224 image is 7x7
MIN_DENSE_IMAGE_SIZE = 224


def parse_conv(entry: str) -> tuple[int, int]:
  """"conv3-256" -> (3, 256)."""
  kind, channels = entry.split("-")
  return int(kind.removeprefix("conv")), int(channels)


class VGG(layers.ConvNet):
  """One column of `VGG_TABLE` (the parts: `layers.ConvNet`'s fields)."""

  config: str = "D"
  num_classes: int = 1000
  in_channels: int = 3
  width_multiplier: float = 1.0  # scales every conv and the FC widths (tests)
  fc_features: int = 4096
  dropout_rate: float = 0.5
  fully_convolutional: bool = False
  adaptive_pool: bool = True
  kernel_init: str = "glorot"  # the paper's later finding; "gaussian" is N(0, 0.01)
  dense_init: str = "glorot"
  # A column in Table 1's notation used instead of `config`'s (five blocks), e.g. VGG_B_5X5.
  conv_table: tuple[tuple[str, ...], ...] | None = None

  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "config": tuple(VGG_TABLE),
      "activation": tuple(layers.ACTIVATIONS),
      "kernel_init": tuple(layers.INITIALIZERS),
      "dense_init": tuple(layers.INITIALIZERS),
  }

  @property
  def min_image_size(self) -> int:
    return MIN_DENSE_IMAGE_SIZE if self.fully_convolutional else 2 ** len(self.table)

  @property
  def table(self) -> tuple[tuple[str, ...], ...]:
    """The column this network builds: `conv_table`, else `config`'s column of Table 1."""
    if self.conv_table is None:
      return VGG_TABLE[self.config]
    entries = [e for block in self.conv_table for e in block]
    if not entries or any(e != "LRN" and not re.fullmatch(r"conv\d+-\d+", e) for e in entries):
      raise ModelError(f"VGG: conv_table={self.conv_table!r} must be blocks of entries like "
                       "'conv3-64' (kernel-channels) or 'LRN', as in VGG_TABLE")
    return tuple(tuple(block) for block in self.conv_table)

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    act = self.checked_activation(x, model=f"VGG-{self.config}", min_size=self.min_image_size)
    # Conv biases stay with BN, as in torchvision's vgg*_bn.
    conv = self.conv_part(self.kernel_init, use_bias=True)
    norm = self.norm_part()
    feats: dict[str, Array] = {}
    x = x.astype(self.dtype)
    for block_index, block in enumerate(self.table, start=1):
      conv_index = 0
      for entry in block:
        if entry == "LRN":
          x = layers.LocalResponseNorm(size=5, k=2.0, alpha=1e-4, beta=0.75)(x)
          continue
        conv_index += 1
        kernel, channels = parse_conv(entry)
        x = layers.ConvNormAct(
            layers.scaled_channels(channels, self.width_multiplier), (kernel, kernel),
            conv=conv, norm=norm, padding=layers.symmetric_padding(kernel), act=act,
            name=f"conv{block_index}_{conv_index}")(x, train)
      x = self.max_pool(x, (2, 2), (2, 2))
      feats[f"block{block_index}"] = x

    if not self.fully_convolutional and x.shape[1:3] != (FC6_RECEPTIVE_FIELD,) * 2:
      if not self.adaptive_pool:
        raise ModelError(
            f"VGG's fc6 takes the 7x7 pool5 map of a 224-pixel image; this input gives "
            f"{x.shape[1]}x{x.shape[2]}. Pass fully_convolutional=True (the paper's dense "
            f"evaluation) or adaptive_pool=True (torchvision), or resize to 224.")
      x = layers.adaptive_avg_pool(x, (FC6_RECEPTIVE_FIELD,) * 2)

    fc_width = layers.scaled_channels(self.fc_features, self.width_multiplier)
    dense = functools.partial(layers.FullyConnected, dtype=self.dtype,
                              param_dtype=self.param_dtype,
                              kernel_init=layers.initializer(self.dense_init))
    dense_mode = self.fully_convolutional
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    x = act(dense(fc_width, receptive_field=(FC6_RECEPTIVE_FIELD,) * 2,
                  name="fc6")(x, as_conv=dense_mode))
    feats["fc6"] = x
    x = act(dense(fc_width, name="fc7")(dropout(x), as_conv=dense_mode))
    feats["fc7"] = x
    feats["pre_logits"] = (layers.global_avg_pool(x) if dense_mode else x).astype(jnp.float32)
    scores = dense(self.num_classes, name="fc8")(dropout(x), as_conv=dense_mode)
    logits = jnp.mean(scores.astype(jnp.float32), axis=(1, 2)) if dense_mode else scores
    logits = logits.astype(jnp.float32)
    return (logits, feats) if features else logits


_ALIASES = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}

# Dense evaluation (Sec. 3.2): test scales Q = {S - 32, S, S + 32} for a net
# trained at a fixed scale S, {Smin, (Smin + Smax) / 2, Smax} for scale jitter;
# given for 224 crops and scaled with the image size.
SCALE_OFFSET = 32
REFERENCE_SIZE = 224


def dense_module(model: VGG) -> VGG:
  """VGG with fc6..fc8 run as convolutions over the whole image (same parameters)."""
  return model.clone(fully_convolutional=True)


def dense_scales(input_settings: Mapping[str, Any], image_size: int) -> tuple[int, ...]:
  """The paper's test scales Q for a training's config.input (S from its scale_jitter
  augment_kwargs, else the 256-equivalent of the crop)."""
  ratio = image_size / REFERENCE_SIZE
  kwargs = dict(input_settings.get("augment_kwargs") or {})
  default_s = int(round(256 * ratio))
  if input_settings.get("augment") == "scale_jitter":
    smin = int(kwargs.get("scale_min", default_s))
    smax = int(kwargs.get("scale_max", int(round(512 * ratio))))
  else:
    smin = smax = default_s
  if smin == smax:
    offset = int(round(SCALE_OFFSET * ratio))
    return (smin - offset, smin, smin + offset)
  return (smin, (smin + smax) // 2, smax)


# The BN variants' FC layers start at N(0, 0.01), torchvision's vgg*_bn
# initialisation: behind normalised conv features, Glorot-uniform FC layers
# give first logits with a large per-class offset and a first loss of 7.55
# for VGG-16-BN (1/8 width, 224 px, BN and dropout in training mode) against
# ln 1000 = 6.91; N(0, 0.01) gives 6.91. Plain VGG keeps Glorot (6.92:
# without BN the signal shrinks layer by layer). `dense_init="glorot"` is
# the other choice.
VGG_BN_INIT = {"dense_init": "gaussian"}


def _register_all() -> None:
  from cnnjax.models.registry import ModelSpec, register  # pylint: disable=import-outside-toplevel
  from cnnjax.models.warm_start import warm_start_vgg  # pylint: disable=import-outside-toplevel
  hooks = {"dense": dense_module, "dense_scales": dense_scales, "warm_start": warm_start_vgg}
  for config in VGG_TABLE:
    base = "vgg_" + config.lower().replace("-", "_")
    depth = sum(1 for block in VGG_TABLE[config] for e in block if e != "LRN") + 3
    names = [base] + ([_ALIASES[config]] if config in _ALIASES else [])
    for name in names:
      register(name, ModelSpec(VGG, {"config": config}, "vgg",
                               description=f"VGG configuration {config} ({depth} weight layers)",
                               **hooks))
      if config != "A-LRN":
        register(f"{name}_bn", ModelSpec(
            VGG, {"config": config, "use_bn": True, **VGG_BN_INIT}, "vgg",
            description=f"VGG {config} with BatchNorm after every conv", **hooks))


_register_all()
