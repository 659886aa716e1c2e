"""Residual networks (He, Zhang, Ren, Sun, CVPR 2016) and their plain twins.

One module, `ResNet`, builds every ImageNet depth (18..152), the CIFAR-10
6n+2 networks (20..1202) and the plain (shortcut-free) baselines from the
tables `IMAGENET_DEPTHS` and `cifar_stage_sizes`. Options:

* `version="1"`: the paper's bottleneck, stride 2 on the first 1x1 (3.86 GMACs
  for ResNet-50); `"1.5"`: stride on the 3x3 (torchvision, Flax example; 4.09G).
* `shortcut`: "A" identity with zero-padded channels and stride-2 subsampling
  (parameter-free), "B" projection (1x1 conv + BN) only where the shape changes,
  "C" projection in every block, "none" for plain networks.
* `residual_scale_init`: the initial value of the last BN scale of each
  residual branch: a number (1.0: the paper's and torchvision's default) or
  "inverse_sqrt_blocks" (1/sqrt(total blocks), the CIFAR ResNets' default);
  0 starts every block as the identity (the ImageNet ResNets' default;
  torchvision's `zero_init_residual=True`). Plain nets keep 1. Why each default:
  `CIFAR_RESNET_INIT`, `IMAGENET_RESNET_INIT`.
* `dense_init`: the classifier's initialiser ("lecun"; "zeros" starts at ln C).
* `activation`, `conv`, `norm`, `max_pool`: the parts every block is built
  from (a name from `layers.ACTIVATIONS` or any callable; a module class or
  partial called like nn.Conv; a normalisation class or partial, e.g.
  `functools.partial(nn.GroupNorm, num_groups=8)`, or None; a pooling
  function). `use_bn=False` (or norm=None) drops the norms and gives the
  convolutions biases. `cnnjax.models.cpu.parts()` are faster on XLA:CPU.
* `scan_blocks`: the identical blocks of a stage (all but the first) run under
  `nn.scan`, so compile time stops growing with depth; `remat` recomputes each
  block's activations in the backward pass. `to_scanned_variables` and
  `to_unscanned_variables` convert variables between the two layouts.

Variable tree (unscanned): `stem/{conv,bn}`, `stage{s}/block{b}/conv{1,2[,3]}/{conv,bn}`,
`stage{s}/block{b}/shortcut/{conv,bn}` (projection shortcuts only), `fc/{kernel,bias}`.
Scanned: `stage{s}/block1/...` as above and `stage{s}/blocks/...` with a
leading axis of length (blocks in the stage - 1) on every leaf.

Padding is symmetric (k // 2), as in the papers' Caffe code and torchvision,
so torchvision weights give torchvision's outputs.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ModelError
from cnnjax.models import layers
from cnnjax.models.injection import module_class

Array = jax.Array

# depth -> (blocks per stage, block type); He et al. 2016, Table 1.
IMAGENET_DEPTHS: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}

# CIFAR-10 networks: 6n + 2 layers -> n blocks in each of 3 stages.
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)
CIFAR_PLAIN_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)


# Why residual branches do not start at full scale. With BN scales 1 (the
# paper's and torchvision's default, `residual_scale_init=1.0`) every block
# adds a unit-variance branch to the identity, so the stream's variance grows
# ~linearly with the blocks and the first logits with it: fresh full-width
# CIFAR ResNets (BN in training mode, random labels) start at loss 3.05
# (ResNet-20), 4.46 (56) and 5.81 (110) instead of ln 10 = 2.30, with large
# first gradients; at lr 0.1 from step one the first updates are too big.
#
# The CIFAR ResNets start each last-BN scale at 1/sqrt(total blocks) (0.33
# for ResNet-20, 0.19 for 56, 0.14 for 110): the branches together add ~1 to
# the stream's variance at any depth, so the first loss stays near ln 10
# (2.42, 2.46, 2.45 for 20, 56, 110 layers, full width, batch 64; 1202 within
# 0.5 in tests/models/test_initial_loss.py), and every branch convolution
# gets a gradient from step one. Measured (benchmarks/RESULTS.md, "Deep
# CIFAR ResNets at the paper's learning rate"; 2-core CPU, 2026-12-04):
# * benchmarks/cifar_init.py (SGD 0.9, lr 0.1 from step one, batch 64,
#   digits at 32 px), ResNet-56, seed 0, loss at step 100 / mean of steps
#   51-100: 1/sqrt(blocks) 0.09 / 0.09; zero scales 0.48 / 1.02; scales 1
#   0.96 / 1.58; zero classifier 1.86 / 2.04. Five seeds of ResNet-56 and
#   of ResNet-110 (warm-up) with the default: RESULTS.md.
# * the quickstart (`python train.py`: ResNet-20, 150 steps of warm-up +
#   cosine), held-out top-1 over seeds 0, 1, 2: 1/sqrt(blocks) 98.33, 98.67,
#   99.33%; scales 1 99.33, 99.67, 99.33%; zero scales 84.00, 83.67, 86.33%
#   (the branches' convolutions get no gradient until their scales grow:
#   training sat at chance for ~75 of the 150 steps); N(0, 0.01) classifier
#   99.33, 99.33, 98.67%.
# So zero scales (`residual_scale_init=0`, Goyal et al. 2017) start at
# chance but learn late on a short schedule, and scales 1 start far above
# chance; 1/sqrt(blocks) does well on both. Both stay options. Plain nets
# have no residual branch (a zero or small last-BN scale would shrink the
# whole signal) and no stream that grows: they keep scales 1.
CIFAR_RESNET_INIT: dict[str, Any] = {"residual_scale_init": "inverse_sqrt_blocks"}

# The ImageNet ResNets start their last-BN scales at 0, as in Goyal et al.
# (2017), torchvision's `zero_init_residual=True` and Flax's ImageNet
# example, the published large-batch ImageNet recipes (their training is not
# measurable here). With scales 1 a fresh ResNet-18 / ResNet-50 (1/8 width,
# 224 px, BN in training mode) starts at loss 7.60 / 7.52 against
# ln 1000 = 6.91; with zero scales at 7.09 / 6.99. Their schedules are long
# (90 epochs, with warm-up in large-batch runs), so the late start that hurt
# the 150-step quickstart is a small part of them (not measured here).
# `residual_scale_init=1.0` gives
# torchvision's default initialisation.
IMAGENET_RESNET_INIT: dict[str, Any] = {"residual_scale_init": 0.0}


def cifar_stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage of the 6n+2-layer CIFAR network."""
  if (depth - 2) % 6:
    raise ModelError(f"CIFAR ResNets have 6n+2 layers (20, 32, 44, ...); got {depth}.")
  n = (depth - 2) // 6
  return (n, n, n)


BOTTLENECK_EXPANSION = 4


class ResidualBlock(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block.

  BN follows every convolution; ReLU follows the addition. With
  shortcut="none" there is no addition (plain networks).
  """

  features: int  # channels of the 3x3 convolutions
  strides: int
  bottleneck: bool
  conv_norm_act: layers.ModuleDef  # partial of ConvNormAct (conv, norm injected)
  act: Callable[[Array], Array]
  shortcut: str = "B"
  version: str = "1.5"
  residual_scale_init: float = 1.0  # the last BN scale's initial value

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    # 1.0 keeps the norm's own initialiser, so norms without a scale work as before.
    last_scale_init = (None if self.residual_scale_init == 1.0
                       else nn.initializers.constant(self.residual_scale_init))
    if self.bottleneck:
      out_features = self.features * BOTTLENECK_EXPANSION
      first_stride, middle_stride = ((self.strides, 1) if self.version == "1"
                                     else (1, self.strides))
      y = self.conv_norm_act(self.features, (1, 1), strides=first_stride, padding="VALID",
                             act=self.act, name="conv1")(x, train)
      y = self.conv_norm_act(self.features, (3, 3), strides=middle_stride,
                             padding=layers.symmetric_padding(3), act=self.act,
                             name="conv2")(y, train)
      y = self.conv_norm_act(out_features, (1, 1), padding="VALID", act=None,
                             norm_scale_init=last_scale_init, name="conv3")(y, train)
    else:
      out_features = self.features
      y = self.conv_norm_act(self.features, (3, 3), strides=self.strides,
                             padding=layers.symmetric_padding(3), act=self.act,
                             name="conv1")(x, train)
      y = self.conv_norm_act(self.features, (3, 3), padding=layers.symmetric_padding(3),
                             act=None, norm_scale_init=last_scale_init,
                             name="conv2")(y, train)
    if self.shortcut == "none":
      return self.act(y)
    shape_changes = self.strides != 1 or x.shape[-1] != out_features
    if self.shortcut == "C" or (self.shortcut == "B" and shape_changes):
      residual = self.conv_norm_act(out_features, (1, 1), strides=self.strides,
                                    padding="VALID", act=None, name="shortcut")(x, train)
    else:
      residual = zero_padded_identity(x, self.strides, out_features)
    return self.act(y + residual.astype(y.dtype))


def zero_padded_identity(x: Array, strides: int, out_features: int) -> Array:
  """Option A: subsample by `strides`, append zero channels up to `out_features`."""
  if strides != 1:
    x = x[:, ::strides, ::strides, :]
  extra = out_features - x.shape[-1]
  if extra > 0:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


class ResNetStage(nn.Module):
  """`num_blocks` blocks; the first may change the shape, the rest are identical.

  With `scan` the identical blocks share one traced body under `nn.scan`
  (variables under "blocks", stacked on axis 0); `remat` recomputes each
  block's activations during the backward pass instead of storing them.
  """

  num_blocks: int
  block: layers.ModuleDef  # partial of ResidualBlock (everything but strides)
  strides: int
  scan: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:

    def run_block(module: nn.Module, carry: Array, _: Any = None):
      return module(carry, train), None

    body = nn.remat(run_block, prevent_cse=not self.scan) if self.remat else run_block
    x, _ = body(self.block(strides=self.strides, name="block1"), x)
    if self.num_blocks == 1:
      return x
    if self.scan:
      scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True, "dropout": True},
                        length=self.num_blocks - 1)
      x, _ = scanned(self.block(strides=1, name="blocks"), x, None)
    else:
      for index in range(2, self.num_blocks + 1):
        x, _ = body(self.block(strides=1, name=f"block{index}"), x)
    return x


class ResNet(layers.ConvNet):
  """ResNet / plain network for ImageNet (stem="imagenet") or CIFAR (stem="cifar").

  The parts and BatchNorm settings are `layers.ConvNet`'s fields (keyword-only).
  """

  stage_sizes: Sequence[int]
  block: str = "basic"  # "basic" | "bottleneck"
  stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max pool; "cifar": 3x3 conv
  width: int = 64  # channels of the first stage; doubled at each later stage
  width_multiplier: float = 1.0
  num_classes: int = 1000
  in_channels: int = 3
  version: str = "1.5"
  shortcut: str = "B"
  residual_scale_init: float | str = 1.0
  kernel_init: str = "he"
  dense_init: str = "lecun"
  use_bn: bool = layers.keyword_field(True)
  scan_blocks: bool = False
  remat: bool = False

  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "block": ("basic", "bottleneck"),
      "stem": ("imagenet", "cifar"),
      "version": ("1", "1.5"),
      "shortcut": ("A", "B", "C", "none"),
      "activation": tuple(layers.ACTIVATIONS),
      "kernel_init": tuple(layers.INITIALIZERS),
      "dense_init": tuple(layers.INITIALIZERS),
  }

  @property
  def min_image_size(self) -> int:
    """Each stride-2 step halves the map; below this the last stage is empty."""
    return 2 ** (len(self.stage_sizes) - 1) * (4 if self.stem == "imagenet" else 1)

  def residual_branch_scale(self, norm: layers.ModuleDef | None) -> float:
    """The initial last-BN scale of every residual branch (see CIFAR_RESNET_INIT)."""
    value = self.residual_scale_init
    if value == "inverse_sqrt_blocks":  # the other values: options.RANGES
      value = 1 / math.sqrt(sum(self.stage_sizes))
    value = float(value)
    if value != 1.0 and norm is not None:
      norm_class = module_class(norm)
      if not hasattr(norm_class, "scale_init"):
        raise ModelError(
            f"{norm_class.__name__} has no scale_init, which residual_scale_init="
            f"{self.residual_scale_init!r} sets (the last norm of each residual branch starts "
            f"at {value:.3g}); use a norm with a learnt scale, or residual_scale_init=1.0.")
    return value

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    act = self.checked_activation(x, model=type(self).__name__, min_size=self.min_image_size)
    norm = self.norm_part()
    conv = self.conv_part(self.kernel_init, use_bias=norm is None)
    conv_norm_act = functools.partial(layers.ConvNormAct, conv=conv, norm=norm)
    feats: dict[str, Array] = {}

    x = x.astype(self.dtype)
    base = layers.scaled_channels(self.width, self.width_multiplier)
    if self.stem == "imagenet":
      x = conv_norm_act(base, (7, 7), strides=2, padding=layers.symmetric_padding(7),
                        act=act, name="stem")(x, train)
      x = self.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    else:
      x = conv_norm_act(base, (3, 3), padding=layers.symmetric_padding(3), act=act,
                        name="stem")(x, train)
    feats["stem"] = x

    for stage_index, num_blocks in enumerate(self.stage_sizes):
      block = functools.partial(
          ResidualBlock, features=base * 2**stage_index,
          bottleneck=self.block == "bottleneck", conv_norm_act=conv_norm_act, act=act,
          shortcut=self.shortcut, version=self.version,
          residual_scale_init=self.residual_branch_scale(norm))
      x = ResNetStage(num_blocks=num_blocks, block=block,
                      strides=1 if stage_index == 0 else 2, scan=self.scan_blocks,
                      remat=self.remat, name=f"stage{stage_index + 1}")(x, train)
      feats[f"stage{stage_index + 1}"] = x

    pooled = layers.global_avg_pool(x)
    feats["pre_logits"] = pooled
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=layers.initializer(self.dense_init),
                      name="fc")(pooled).astype(jnp.float32)
    return (logits, feats) if features else logits


# ------------------------------------------------------- layout conversion

_BLOCK_KEY = re.compile(r"^block(\d+)$")
SCANNED_KEY = "blocks"


def _is_stage(tree: Mapping[str, Any]) -> bool:
  return "block1" in tree and all(
      _BLOCK_KEY.match(key) or key == SCANNED_KEY for key in tree)


def to_scanned_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Unscanned -> scanned layout: stage{s}/block{2..N} stacked into stage{s}/blocks.

  Works on a whole variables dict (params and batch_stats alike) or on any
  one collection; everything outside the stages is copied unchanged.
  """

  def convert(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    if _is_stage(tree) and SCANNED_KEY not in tree:
      count = len(tree)
      missing = [i for i in range(1, count + 1) if f"block{i}" not in tree]
      if missing:
        raise ModelError(f"stage variables lack blocks {missing}; cannot stack them.")
      converted = {"block1": convert(tree["block1"])}
      if count > 1:
        rest = [tree[f"block{i}"] for i in range(2, count + 1)]
        converted[SCANNED_KEY] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *rest)
      return converted
    return {key: convert(value) for key, value in tree.items()}

  return convert(variables)


def to_unscanned_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Scanned -> unscanned layout: stage{s}/blocks split into stage{s}/block{2..N}."""

  def convert(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    if _is_stage(tree) and SCANNED_KEY in tree:
      converted = {"block1": convert(tree["block1"])}
      stacked = tree[SCANNED_KEY]
      length = jax.tree.leaves(stacked)[0].shape[0]
      for index in range(length):
        converted[f"block{index + 2}"] = jax.tree.map(lambda leaf, i=index: leaf[i], stacked)
      return converted
    return {key: convert(value) for key, value in tree.items()}

  return convert(variables)


# ------------------------------------------------------------------ registry

# Dense evaluation (Sec. 4, following VGG): the fully convolutional net over
# the whole image at these shorter sides, given for 224 crops.
DENSE_SCALES = (224, 256, 384, 480, 640)


def dense_module(model: ResNet) -> ResNet:
  """ResNet as it is: its global average pool already takes any image size."""
  return model


def dense_scales(input_settings: Mapping[str, Any], image_size: int) -> tuple[int, ...]:
  """The paper's test scales, scaled with the image size (whatever the training's input)."""
  del input_settings
  return tuple(int(round(q * image_size / 224)) for q in DENSE_SCALES)


def _register_all() -> None:
  from cnnjax.models.registry import ModelSpec, register  # pylint: disable=import-outside-toplevel
  hooks = {"dense": dense_module, "dense_scales": dense_scales}
  for depth, (stage_sizes, block) in IMAGENET_DEPTHS.items():
    common = {"stage_sizes": stage_sizes, "block": block}
    register(f"resnet{depth}", ModelSpec(
        ResNet, {**common, **IMAGENET_RESNET_INIT}, "resnet",
        description=f"ResNet-{depth} ({block} blocks), v1.5, option-B shortcuts", **hooks))
    register(f"plain{depth}", ModelSpec(
        ResNet, {**common, "shortcut": "none"}, "resnet",
        description=f"plain-{depth}: ResNet-{depth} without shortcuts", **hooks))
  for depth in CIFAR_DEPTHS:
    register(f"cifar_resnet{depth}", ModelSpec(
        ResNet, {"stage_sizes": cifar_stage_sizes(depth), "block": "basic", "stem": "cifar",
                 "width": 16, "shortcut": "A", **CIFAR_RESNET_INIT}, "cifar_resnet", num_classes=10,
        image_size=32, description=f"CIFAR-10 ResNet-{depth} (6n+2, option A)", **hooks))
  for depth in CIFAR_PLAIN_DEPTHS:
    register(f"cifar_plain{depth}", ModelSpec(
        ResNet, {"stage_sizes": cifar_stage_sizes(depth), "block": "basic", "stem": "cifar",
                 "width": 16, "shortcut": "none"}, "cifar_resnet", num_classes=10,
        image_size=32, description=f"CIFAR-10 plain-{depth} (no shortcuts)", **hooks))


_register_all()
