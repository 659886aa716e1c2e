"""torchvision ImageNet weights as cnnjax models.

    import torchvision
    from cnnjax.interop import torchvision as tv

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    state = torchvision.models.resnet50(weights=weights).state_dict()
    model, variables = tv.load("resnet50", state)          # or a .pth/.safetensors path
    logits = model.apply(variables, images_nhwc, train=False)

`model.apply(variables, x)` on NHWC images gives the logits torchvision
gives on the same images in NCHW. The input normalisation is torchvision's:
RGB scaled to [0, 1], minus mean (0.485, 0.456, 0.406), divided by std
(0.229, 0.224, 0.225) -- equivalently, 0..255 pixels minus 255 * mean,
divided by 255 * std (`IMAGENET_MEAN_255`, `IMAGENET_STD_255`).

Each supported name maps to the cnnjax architecture torchvision builds:

* `alexnet` -> "alexnet_v2" (the 2014 single-tower network: 64/192/384/256/256
  channels, no LRN, no groups, dropout before fc6 and fc7, adaptive 6x6 pool).
* `vgg11/13/16/19[_bn]` -> VGG A/B/D/E (BatchNorm variants keep conv biases),
  adaptive 7x7 pool; the same variables run `fully_convolutional=True`.
* `googlenet` -> "googlenet_torchvision" (BatchNorm eps 1e-3, 3x3 kernels in
  the "5x5" branch, 2x2/2 ceil-mode pool before stage 5, dropout 0.2,
  adaptive 4x4 pool in the auxiliary heads). Pass `transform_input=` as
  torchvision built the network: `googlenet(weights=IMAGENET1K_V1)` uses True
  (the default here, since those are the published weights);
  `googlenet(weights=None)` uses False. Auxiliary heads are imported when the
  state dict has them (aux1.*, aux2.*) and left out otherwise.
* `resnet18/34/50/101/152` -> v1.5 ResNets (stride on the 3x3 of each
  bottleneck), option-B projection shortcuts; `scan_blocks=True` returns the
  scanned layout.

Layouts: conv OIHW -> HWIO; linear (out, in) -> (in, out); the first linear
layer after a flatten has its inputs permuted from torch's C, H, W order to
Flax's H, W, C; BatchNorm weight/bias -> params scale/bias, running_mean/var
-> batch_stats mean/var; num_batches_tracked is ignored. Widths of the
classifier (num_classes, and VGG's/AlexNet's hidden FC width) are read from
the state dict, so fine-tuned heads import too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.errors import CheckpointError, ModelError, close_matches
from cnnjax.interop.state_dict import (Layer, StateDict, abstract_variables, convert,
                                       read_state_dict)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_255 = tuple(255.0 * m for m in IMAGENET_MEAN)
IMAGENET_STD_255 = tuple(255.0 * s for s in IMAGENET_STD)

# torchvision name -> cnnjax registry name.
VGG_CONFIG = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}
RESNET_DEPTHS = (18, 34, 50, 101, 152)
CNNJAX_NAMES: dict[str, str] = {
    "alexnet": "alexnet_v2",
    **{name: name for name in VGG_CONFIG},
    **{f"{name}_bn": f"{name}_bn" for name in VGG_CONFIG},
    "googlenet": "googlenet_torchvision",
    **{f"resnet{depth}": f"resnet{depth}" for depth in RESNET_DEPTHS},
}
SUPPORTED = tuple(CNNJAX_NAMES)


def _weight(state: StateDict, key: str, name: str) -> np.ndarray:
  if key not in state:
    raise CheckpointError(
        f"{name}: missing state dict key {key!r}, which every torchvision {name} has. "
        f"Is this the right architecture name?")
  return state[key]


# ------------------------------------------------------------------ AlexNet

ALEXNET_FEATURES = (0, 3, 6, 8, 10)  # indices of the convs in torchvision's `features`
ALEXNET_CLASSIFIER = {"fc6": 1, "fc7": 4, "fc8": 6}
ALEXNET_POOL5 = (6, 6)


def _alexnet(state: StateDict, name: str, overrides: dict[str, Any]):
  kwargs = {"fc_features": _weight(state, "classifier.1.weight", name).shape[0]}
  layers = [Layer(f"features.{index}", (f"conv{number}", "conv"), "conv")
            for number, index in enumerate(ALEXNET_FEATURES, start=1)]
  layers.append(Layer("classifier.1", ("fc6",), "dense_after_flatten", spatial=ALEXNET_POOL5))
  layers.append(Layer("classifier.4", ("fc7",), "dense"))
  layers.append(Layer("classifier.6", ("fc8",), "dense"))
  return kwargs, layers, _weight(state, "classifier.6.weight", name).shape[0]


# ---------------------------------------------------------------------- VGG

VGG_POOL5 = (7, 7)


def _vgg(state: StateDict, name: str, overrides: dict[str, Any]):
  from cnnjax.models.vgg import VGG_TABLE  # pylint: disable=import-outside-toplevel
  batch_norm = name.endswith("_bn")
  config = VGG_CONFIG[name.removesuffix("_bn")]
  layers = []
  index = 0  # walks torchvision's `features` Sequential: conv, [bn], relu, ..., pool
  for block_number, block in enumerate(VGG_TABLE[config], start=1):
    for conv_number in range(1, len(block) + 1):  # A/B/D/E have no LRN entries
      path = (f"conv{block_number}_{conv_number}",)
      layers.append(Layer(f"features.{index}", path + ("conv",), "conv"))
      index += 1
      if batch_norm:
        layers.append(Layer(f"features.{index}", path + ("bn",), "bn"))
        index += 1
      index += 1  # ReLU
    index += 1  # max pool
  layers.append(Layer("classifier.0", ("fc6",), "dense_after_flatten", spatial=VGG_POOL5))
  layers.append(Layer("classifier.3", ("fc7",), "dense"))
  layers.append(Layer("classifier.6", ("fc8",), "dense"))
  kwargs = {"fc_features": _weight(state, "classifier.0.weight", name).shape[0]}
  return kwargs, layers, _weight(state, "classifier.6.weight", name).shape[0]


# ---------------------------------------------------------------- GoogLeNet

GOOGLENET_STEM = {"conv1": "conv1", "conv2": "conv2_reduce", "conv3": "conv2"}
GOOGLENET_BRANCHES = {
    "branch1": "branch1x1",
    "branch2.0": "branch3x3_reduce",
    "branch2.1": "branch3x3",
    "branch3.0": "branch5x5_reduce",
    "branch3.1": "branch5x5",  # a 3x3 convolution in torchvision
    "branch4.1": "pool_proj",  # branch4.0 is the 3x3/1 max pool
}
AUX_MAP = (4, 4)


def _basic_conv(torch_prefix: str, flax_path: tuple[str, ...]) -> list[Layer]:
  """torchvision's BasicConv2d: a bias-free conv and a BatchNorm."""
  return [Layer(f"{torch_prefix}.conv", flax_path + ("conv",), "conv"),
          Layer(f"{torch_prefix}.bn", flax_path + ("bn",), "bn")]


def _googlenet(state: StateDict, name: str, overrides: dict[str, Any]):
  from cnnjax.models.googlenet import GOOGLENET_TABLE, InceptionRow  # pylint: disable=import-outside-toplevel
  layers = []
  for torch_name, flax_name in GOOGLENET_STEM.items():
    layers += _basic_conv(torch_name, (flax_name,))
  for row in GOOGLENET_TABLE:
    if not isinstance(row, InceptionRow):
      continue
    for torch_branch, flax_branch in GOOGLENET_BRANCHES.items():
      layers += _basic_conv(f"inception{row.name}.{torch_branch}",
                            (f"inception{row.name}", flax_branch))
  has_aux = any(key.startswith(("aux1.", "aux2.")) for key in state)
  for head in ("aux1", "aux2") if has_aux else ():
    layers += _basic_conv(f"{head}.conv", (head, "proj"))
    layers.append(Layer(f"{head}.fc1", (head, "fc1"), "dense_after_flatten", spatial=AUX_MAP))
    layers.append(Layer(f"{head}.fc2", (head, "fc2"), "dense"))
  layers.append(Layer("fc", ("fc",), "dense"))
  kwargs = {"aux_logits": has_aux, "transform_input": overrides.pop("transform_input", True)}
  return kwargs, layers, _weight(state, "fc.weight", name).shape[0]


# ------------------------------------------------------------------- ResNet


def _resnet(state: StateDict, name: str, overrides: dict[str, Any]):
  from cnnjax.models.resnet import IMAGENET_DEPTHS  # pylint: disable=import-outside-toplevel
  stage_sizes, block = IMAGENET_DEPTHS[int(name.removeprefix("resnet"))]
  convs_per_block = 3 if block == "bottleneck" else 2
  layers = [Layer("conv1", ("stem", "conv"), "conv"), Layer("bn1", ("stem", "bn"), "bn")]
  for stage, num_blocks in enumerate(stage_sizes, start=1):
    for index in range(num_blocks):
      torch_block = f"layer{stage}.{index}"
      flax_block = (f"stage{stage}", f"block{index + 1}")
      for conv in range(1, convs_per_block + 1):
        layers.append(Layer(f"{torch_block}.conv{conv}", flax_block + (f"conv{conv}", "conv"),
                            "conv"))
        layers.append(Layer(f"{torch_block}.bn{conv}", flax_block + (f"conv{conv}", "bn"), "bn"))
      layers.append(Layer(f"{torch_block}.downsample.0", flax_block + ("shortcut", "conv"),
                          "conv"))
      layers.append(Layer(f"{torch_block}.downsample.1", flax_block + ("shortcut", "bn"), "bn"))
  layers.append(Layer("fc", ("fc",), "dense"))
  kwargs = {"version": "1.5", "shortcut": "B"}
  return kwargs, layers, _weight(state, "fc.weight", name).shape[0]


_FAMILIES: dict[str, Callable[..., Any]] = {
    "alexnet": _alexnet,
    **{name: _vgg for name in CNNJAX_NAMES if name.startswith("vgg")},
    "googlenet": _googlenet,
    **{f"resnet{depth}": _resnet for depth in RESNET_DEPTHS},
}


def load(name: str, state_dict: Mapping[str, Any] | str | os.PathLike, *,
         dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
         **overrides: Any):
  """A cnnjax model built as torchvision builds `name`, and its variables.

  Args:
    name: a torchvision model name, one of `SUPPORTED`.
    state_dict: {name: numpy array or torch tensor}, or a path to a
      `.pth`/`.pt` file (read weights-only) or a `.safetensors` file.
    dtype, param_dtype: as `cnnjax.models.create`; batch statistics stay float32.
    **overrides: further `cnnjax.models.create` options, e.g.
      `transform_input=False` for a googlenet built without published
      weights, `fully_convolutional=True` for VGG dense evaluation,
      `scan_blocks=True` for ResNets.

  Returns:
    (model, variables) with `model.apply(variables, images_nhwc, train=False)`
    equal to torchvision's logits.

  Raises:
    ModelError: `name` is not a supported torchvision model.
    CheckpointError: a key is missing or unexpected, or a shape disagrees
      (the message names the key).
  """
  if name not in _FAMILIES:
    raise ModelError(
        f"no torchvision import for {name!r}; {close_matches(name, SUPPORTED)} "
        f"(supported: {', '.join(SUPPORTED)})")
  if "num_classes" in overrides:
    raise ModelError(f"{name}: num_classes is read from the state dict (the classifier's "
                     "weight); do not pass it.")
  state = read_state_dict(state_dict)
  overrides = dict(overrides)
  scan_blocks = overrides.pop("scan_blocks", False)
  architecture_kwargs, layers, num_classes = _FAMILIES[name](state, name, overrides)
  cnnjax_name = CNNJAX_NAMES[name]
  model = models.create(cnnjax_name, num_classes=num_classes, dtype=dtype,
                        param_dtype=param_dtype, **architecture_kwargs, **overrides)
  init_model = model.clone(scan_blocks=False) if scan_blocks else model
  expected = abstract_variables(init_model)
  variables = convert(state, layers, expected, model_name=f"torchvision {name}")
  if scan_blocks:
    model = model.clone(scan_blocks=True)
    variables = models.to_scanned_variables(variables)
  return model, jax.tree.map(jnp.asarray, variables)


def published_weights(name: str, variant: str):
  """torchvision's weights enum member `variant` of model `name` (e.g. "resnet50",
  "IMAGENET1K_V2"), imported the way this package imports torchvision."""
  if name not in _FAMILIES:
    raise ModelError(f"no torchvision import for {name!r}; {close_matches(name, SUPPORTED)}")
  models_module = _torchvision_models()
  members = models_module.get_model_weights(name)
  if variant == "DEFAULT":
    return members.DEFAULT
  if variant not in members.__members__:
    raise ModelError(f"torchvision has no weights {variant!r} for {name}; "
                     f"{close_matches(variant, members.__members__)}")
  return members[variant]


def fetch_state_dict(name: str, variant: str) -> tuple[StateDict, Any]:
  """(state dict, weights enum member) through torchvision's own download and cache.

  The file lands in torch.hub's checkpoint directory ($TORCH_HOME/hub/checkpoints,
  by default ~/.cache/torch/hub/checkpoints) and is read from there afterwards.
  """
  weights = published_weights(name, variant)
  try:
    state = weights.get_state_dict(progress=False)
  except Exception as error:  # URLError, HTTPError, OSError, RuntimeError from torch.hub
    import torch.hub  # pylint: disable=import-outside-toplevel
    file_name = os.path.basename(weights.url)
    raise CheckpointError(
        f"cannot fetch torchvision's {name} {variant} weights ({type(error).__name__}: "
        f"{error}). torchvision downloads {weights.url} into "
        f"{os.path.join(torch.hub.get_dir(), 'checkpoints', file_name)}; put the file there, "
        f"or pass its path (cnnjax.weights.load(..., path=...)).") from error
  return read_state_dict(state), weights


def _torchvision_models():
  """torchvision.models, or CheckpointError naming the extra that installs it."""
  from cnnjax._imports import import_without  # pylint: disable=import-outside-toplevel
  try:
    # CUDA builds of torch import triton (an optional compiler) with torchvision;
    # triton's bundled LLVM crashes a process that has loaded TensorFlow, and
    # loading weights never needs it.
    return import_without("torchvision.models", blocked="triton")
  except ImportError as error:
    raise CheckpointError(
        "fetching torchvision's weights by name needs torch and torchvision: "
        "pip install 'cnnjax[torch]' (or pass a .safetensors file, which reads without "
        "them).") from error


__all__ = ["IMAGENET_MEAN", "IMAGENET_MEAN_255", "IMAGENET_STD", "IMAGENET_STD_255",
           "SUPPORTED", "fetch_state_dict", "load", "published_weights", "read_state_dict"]
