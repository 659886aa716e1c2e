"""GoogLeNet / Inception v1 (Szegedy et al., CVPR 2015), and its variants.

`GOOGLENET_TABLE` is the paper's Table 1, row for row: each inception row
gives (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), and
"max pool" rows are the 3x3/2 poolings between them. Every convolution is
followed by ReLU. Pools round up (Caffe's ceil mode), so 224 -> 112 -> 56 ->
28 -> 14 -> 7. Global average pooling (the paper's 7x7 average pool at 224),
dropout 0.4, linear classifier: 6,998,552 parameters without the auxiliary
heads.

Auxiliary classifiers (on 4a and 4d): avg pool 5x5/3 -> 1x1 conv 128 + ReLU
-> FC 1024 + ReLU -> dropout 0.7 -> linear. With `aux_logits=True` (the
default) their parameters are ALWAYS created by `init` (whatever its `train`
flag), so one variables tree serves training and evaluation; they run only
when `train=True`, and their logits come back in `feats["aux_logits"]` (a
tuple: 4a's head, 4d's head). `aux_logits=False` leaves them out entirely
(the published parameter count). At inputs other than ~224 the 5x5/3 pool
does not give the 4x4 map the FC expects; the head then averages
adaptively to 4x4 (`aux_pool="adaptive"` always does, as torchvision).

The stem's LRNs are Caffe's reference GoogLeNet ones (size 5, alpha 1e-4
divided by the size, beta 0.75, k 1). Conv weights are Glorot ("xavier"),
conv biases 0.2, as in that reference.

Variants (registry names):
* "googlenet": the paper.
* "googlenet_bn": BatchNorm after every convolution (no conv biases, no LRN:
  BN replaces it); otherwise the paper's network.
* "googlenet_torchvision": torchvision's GoogLeNet, for weight import: BN
  with eps 1e-3, 3x3 kernels in the "5x5" branch, dropout 0.2, no LRN, a
  2x2/2 pool before stage 5, adaptive 4x4 pooling in the aux heads, and
  `transform_input` (maps ImageNet-normalised input to [-1, 1] scaling);
  6,624,904 parameters without aux heads.

Parts: `activation` (a name or any callable), `conv` (called like nn.Conv),
`norm` (the normalisation of the BN variants, used where use_bn),
`max_pool` (the pooling function, also in the inception pool branch);
`cnnjax.models.cpu.parts()` are faster on XLA:CPU.

Variables: stem `conv1`, `conv2_reduce`, `conv2` (each `{conv[,bn]}`);
`inception{3a..5b}/{branch1x1, branch3x3_reduce, branch3x3, branch5x5_reduce,
branch5x5, pool_proj}/{conv[,bn]}`; `aux1`, `aux2` with `proj/{conv[,bn]}`,
`fc1`, `fc2`; `fc`. Features: "stem", "inception3a".."inception5b",
"pre_logits" (the pooled 1024-d vector), and "aux_logits" in train mode.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models import layers, pooling

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class InceptionRow:
  """One inception row of Table 1: filters in each branch."""

  name: str
  n1x1: int
  n3x3_reduce: int
  n3x3: int
  n5x5_reduce: int
  n5x5: int
  pool_proj: int

  @property
  def out_channels(self) -> int:
    return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj


MAX_POOL = "max pool"

GOOGLENET_TABLE: tuple[InceptionRow | str, ...] = (
    #            name   #1x1  #3x3red  #3x3  #5x5red  #5x5  poolproj
    InceptionRow("3a",    64,      96,  128,      16,   32,       32),
    InceptionRow("3b",   128,     128,  192,      32,   96,       64),
    MAX_POOL,
    InceptionRow("4a",   192,      96,  208,      16,   48,       64),
    InceptionRow("4b",   160,     112,  224,      24,   64,       64),
    InceptionRow("4c",   128,     128,  256,      24,   64,       64),
    InceptionRow("4d",   112,     144,  288,      32,   64,       64),
    InceptionRow("4e",   256,     160,  320,      32,  128,      128),
    MAX_POOL,
    InceptionRow("5a",   256,     160,  320,      32,  128,      128),
    InceptionRow("5b",   384,     192,  384,      48,  128,      128),
)

AUX_HEADS_AFTER = ("4a", "4d")
AUX_MAP_SIZE = 4  # the paper's 5x5/3 average pool turns 14x14 into 4x4
MIN_IMAGE_SIZE = 32  # the ceil-mode pools need a 2x2 map before the last one


class InceptionModule(nn.Module):
  """Four parallel branches concatenated along channels."""

  row: InceptionRow
  conv_norm_act: layers.ModuleDef
  width_multiplier: float = 1.0
  branch5x5_kernel: int = 5
  max_pool: pooling.MaxPool = pooling.max_pool

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    row = self.row

    def width(channels: int) -> int:
      return layers.scaled_channels(channels, self.width_multiplier)

    def unit(channels: int, kernel: int, name: str):
      return self.conv_norm_act(width(channels), (kernel, kernel),
                                padding=layers.symmetric_padding(kernel), name=name)

    branch1 = unit(row.n1x1, 1, "branch1x1")(x, train)
    branch2 = unit(row.n3x3_reduce, 1, "branch3x3_reduce")(x, train)
    branch2 = unit(row.n3x3, 3, "branch3x3")(branch2, train)
    branch3 = unit(row.n5x5_reduce, 1, "branch5x5_reduce")(x, train)
    branch3 = unit(row.n5x5, self.branch5x5_kernel, "branch5x5")(branch3, train)
    branch4 = self.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    branch4 = unit(row.pool_proj, 1, "pool_proj")(branch4, train)
    return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class AuxiliaryHead(nn.Module):
  """The auxiliary classifier: pool, 1x1 conv 128, FC 1024, dropout 0.7, linear."""

  num_classes: int
  conv_norm_act: layers.ModuleDef
  dense: layers.ModuleDef
  act: Any
  width_multiplier: float = 1.0
  dropout_rate: float = 0.7
  pool: str = "paper"  # "paper": 5x5/3 average pool; "adaptive": to 4x4

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.pool == "paper":
      x = nn.avg_pool(x, (5, 5), strides=(3, 3)) if min(x.shape[1:3]) >= 5 else x
    x = layers.adaptive_avg_pool(x, (AUX_MAP_SIZE, AUX_MAP_SIZE))
    x = self.conv_norm_act(layers.scaled_channels(128, self.width_multiplier), (1, 1),
                           padding="VALID", name="proj")(x, train)
    x = x.reshape(x.shape[0], -1)
    x = self.act(self.dense(layers.scaled_channels(1024, self.width_multiplier),
                            name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return self.dense(self.num_classes, name="fc2")(x).astype(jnp.float32)


class GoogLeNet(layers.ConvNet):
  """Inception v1 read from `GOOGLENET_TABLE` (the parts: `layers.ConvNet`'s fields)."""

  table: Sequence[InceptionRow | str] = GOOGLENET_TABLE
  num_classes: int = 1000
  in_channels: int = 3
  width_multiplier: float = 1.0  # scales every conv and FC width (tests)
  aux_logits: bool = True
  aux_pool: str = "paper"
  aux_dropout_rate: float = 0.7
  dropout_rate: float = 0.4
  lrn: bool = True
  branch5x5_kernel: int = 5
  last_pool_window: int = 3  # the pool before 5a; torchvision uses 2x2/2
  transform_input: bool = False
  conv_bias: float = 0.2
  kernel_init: str = "glorot"
  dense_init: str = "glorot"

  CHOICES: ClassVar[dict[str, tuple[Any, ...]]] = {
      "aux_pool": ("paper", "adaptive"),
      "branch5x5_kernel": (3, 5),
      "last_pool_window": (2, 3),
      "activation": tuple(layers.ACTIVATIONS),
      "kernel_init": tuple(layers.INITIALIZERS),
      "dense_init": tuple(layers.INITIALIZERS),
  }

  min_image_size: ClassVar[int] = MIN_IMAGE_SIZE

  @nn.compact
  def __call__(self, x: Array, train: bool = False, features: bool = False):
    act = self.checked_activation(x, model="GoogLeNet", min_size=self.min_image_size)
    norm = self.norm_part()
    conv = self.conv_part(self.kernel_init, use_bias=norm is None,
                          bias_init=nn.initializers.constant(self.conv_bias))
    conv_norm_act = functools.partial(layers.ConvNormAct, conv=conv, norm=norm, act=act)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=layers.initializer(self.dense_init))
    width = functools.partial(layers.scaled_channels, multiplier=self.width_multiplier)
    lrn = functools.partial(layers.LocalResponseNorm, size=5, k=1.0, alpha=1e-4, beta=0.75,
                            alpha_over_size=True)
    feats: dict[str, Any] = {}

    x = x.astype(jnp.float32)
    if self.transform_input:
      # Undo ImageNet mean/std normalisation, redo it as (x - 0.5) / 0.5.
      mean = jnp.array([0.485, 0.456, 0.406], jnp.float32)
      std = jnp.array([0.229, 0.224, 0.225], jnp.float32)
      x = x * (std / 0.5) + (mean - 0.5) / 0.5
    x = x.astype(self.dtype)

    x = conv_norm_act(width(64), (7, 7), strides=2, padding=layers.symmetric_padding(7),
                      name="conv1")(x, train)
    x = layers.max_pool_ceil(x, 3, 2, self.max_pool)
    if self.lrn:
      x = lrn()(x)
    x = conv_norm_act(width(64), (1, 1), padding="VALID", name="conv2_reduce")(x, train)
    x = conv_norm_act(width(192), (3, 3), padding=layers.symmetric_padding(3),
                      name="conv2")(x, train)
    if self.lrn:
      x = lrn()(x)
    x = layers.max_pool_ceil(x, 3, 2, self.max_pool)
    feats["stem"] = x

    run_aux = self.aux_logits and (train or self.is_initializing())
    aux_outputs = []
    pools_seen = 0
    for row in self.table:
      if row == MAX_POOL:
        pools_seen += 1
        last = pools_seen == sum(1 for r in self.table if r == MAX_POOL)
        window = self.last_pool_window if last else 3
        x = layers.max_pool_ceil(x, window, 2, self.max_pool)
        continue
      x = InceptionModule(row, conv_norm_act, self.width_multiplier, self.branch5x5_kernel,
                          self.max_pool, name=f"inception{row.name}")(x, train)
      feats[f"inception{row.name}"] = x
      if run_aux and row.name in AUX_HEADS_AFTER:
        head = AuxiliaryHead(self.num_classes, conv_norm_act, dense, act,
                             self.width_multiplier, self.aux_dropout_rate, self.aux_pool,
                             name=f"aux{AUX_HEADS_AFTER.index(row.name) + 1}")
        aux_outputs.append(head(x, train))
    if train and self.aux_logits:
      feats["aux_logits"] = tuple(aux_outputs)

    x = layers.global_avg_pool(x)
    feats["pre_logits"] = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = dense(self.num_classes, name="fc")(x).astype(jnp.float32)
    return (logits, feats) if features else logits


def _register_all() -> None:
  from cnnjax.models.registry import ModelSpec, register  # pylint: disable=import-outside-toplevel
  # Profiles and tables count the deployed network: the auxiliary heads only train.
  hooks = {"profile_kwargs": {"aux_logits": False}}
  register("googlenet", ModelSpec(
      GoogLeNet, {}, "googlenet",
      description="GoogLeNet (Inception v1) as published, aux heads in training", **hooks))
  register("googlenet_bn", ModelSpec(
      GoogLeNet, {"use_bn": True, "lrn": False}, "googlenet",
      description="GoogLeNet with BatchNorm after every conv (no LRN)", **hooks))
  register("googlenet_torchvision", ModelSpec(
      GoogLeNet, {"use_bn": True, "bn_epsilon": 1e-3, "lrn": False, "branch5x5_kernel": 3,
                  "dropout_rate": 0.2, "last_pool_window": 2, "aux_pool": "adaptive",
                  "transform_input": False}, "googlenet",
      description="torchvision's GoogLeNet (BN, 3x3 in the 5x5 branch), for weight import",
      **hooks))


_register_all()
