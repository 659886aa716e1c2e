"""Deepen a trained network: the ResNet paper's construction argument, as a function.

"There exists a solution by construction to the deeper model: the added
layers are identity mapping, and the other layers are copied from the
learned shallower model" (He et al. 2016, Sec. 1). `deepen` builds that
solution for the `ResNet` family (the CIFAR 6n+2 networks and their plain
twins, the ImageNet ResNets): the stem, the classifier and the first blocks
of every stage are the trained shallower net's; each stage's extra blocks,
appended after them, compute the identity in evaluation mode:

* plain basic blocks (conv-BN-ReLU-conv-BN-ReLU, no shortcut): each 3x3
  kernel is the identity (1 at the centre tap from channel c to channel c),
  and each BatchNorm passes values through (running mean 0, variance 1,
  scale sqrt(1 + epsilon), offset 0). The block's input already went through
  a ReLU, so the ReLUs change nothing.
* residual blocks (any block type): the last BatchNorm of the branch has
  scale 0 and offset 0, so the branch adds 0 and the block returns
  ReLU(0 + x) = x; its other layers keep the deeper net's fresh values.

In training mode BatchNorm normalises with the batch's statistics, not the
running ones, so only the evaluation-mode function is the shallower net's.
Plain bottleneck blocks (1x1 reductions) cannot be the identity and are
refused, as are scanned variable layouts (`resnet.to_unscanned_variables`
converts them) and pairs that differ in anything but the block counts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnjax.errors import ModelError

_BLOCK = re.compile(r"block(\d+)$")


def _as_dict(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {key: _as_dict(value) for key, value in tree.items()}
  return tree


def _stage_blocks(params: Mapping[str, Any], which: str) -> dict[str, int]:
  stages = {}
  for name, stage in params.items():
    if not name.startswith("stage"):
      continue
    if "blocks" in stage:
      raise ModelError(f"deepen: the {which} net's variables are in the scanned layout "
                       "(scan_blocks=True); convert them with "
                       "cnnjax.models.resnet.to_unscanned_variables first.")
    numbers = sorted(int(_BLOCK.match(key).group(1)) for key in stage if _BLOCK.match(key))
    if numbers != list(range(1, len(numbers) + 1)):
      raise ModelError(f"deepen: {which} net's {name} has blocks {numbers}, not 1..n")
    stages[name] = len(numbers)
  if not stages:
    raise ModelError(f"deepen: the {which} variables have no 'stage<k>' entries; deepen "
                     "takes the variables of a ResNet-family network (cifar_plain20, ...).")
  return stages


def _shapes(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {key: _shapes(value) for key, value in tree.items()}
  return tuple(np.shape(tree))


def _identity_kernel(kernel: Any) -> np.ndarray:
  height, width, inputs, outputs = np.shape(kernel)
  if inputs != outputs or height % 2 == 0 or width % 2 == 0:
    raise ModelError(f"deepen: a plain block's convolution of kernel shape {np.shape(kernel)} "
                     "cannot be the identity (it needs an odd square kernel from C to C "
                     "channels: plain basic blocks only).")
  out = np.zeros(np.shape(kernel), np.asarray(kernel).dtype)
  out[height // 2, width // 2] = np.eye(inputs, dtype=out.dtype)
  return out


def deepen(shallow: Mapping[str, Any], deep: Mapping[str, Any], *, residual: bool,
           epsilon: float = 1e-5) -> dict[str, Any]:
  """The deeper net's variables that compute the trained shallower net's function.

  Args:
    shallow: the trained variables {"params", "batch_stats"} of e.g. cifar_plain20.
    deep: freshly initialised variables of the deeper net of the same family
      and widths (e.g. cifar_plain56): they give the shapes, and the values of
      residual blocks' layers that the construction leaves free.
    residual: whether the blocks have shortcuts (False for the plain nets).
    epsilon: the networks' BatchNorm epsilon (`bn_epsilon`, 1e-5 by default).

  Returns:
    New variables (numpy arrays) for the deeper net; the inputs are not changed.
  """
  if "params" not in shallow or "params" not in deep:
    raise ModelError("deepen takes variable dicts with 'params' (and 'batch_stats'), as "
                     "model.init returns them")
  shallow, out = _as_dict(shallow), copy.deepcopy(_as_dict(deep))
  out = {kind: _to_numpy(tree) for kind, tree in out.items()}
  shallow_blocks = _stage_blocks(shallow["params"], "shallower")
  deep_blocks = _stage_blocks(out["params"], "deeper")
  if shallow_blocks.keys() != deep_blocks.keys() or any(
      deep_blocks[s] < n for s, n in shallow_blocks.items()):
    raise ModelError(f"deepen: the deeper net must have the shallower net's stages with at "
                     f"least as many blocks each; got {shallow_blocks} -> {deep_blocks}")
  for kind in ("params", "batch_stats"):
    source, target = shallow.get(kind, {}), out.get(kind, {})
    for name, value in source.items():
      if name.startswith("stage"):
        for block, tree in value.items():
          _copy_into(target, (name, block), tree)
      else:
        _copy_into(target, (name,), value)
  for stage, count in deep_blocks.items():
    for number in range(shallow_blocks[stage] + 1, count + 1):
      block = f"block{number}"
      params = out["params"][stage][block]
      stats = out.get("batch_stats", {}).get(stage, {}).get(block, {})
      if residual:
        last = max(key for key in params if key.startswith("conv"))
        if "bn" not in params[last]:
          raise ModelError("deepen: a residual block without a norm in its branch cannot be "
                           "made the identity by its norm's scale")
        params[last]["bn"]["scale"] = np.zeros_like(params[last]["bn"]["scale"])
        params[last]["bn"]["bias"] = np.zeros_like(params[last]["bn"]["bias"])
        continue
      if "shortcut" in params:
        raise ModelError("deepen: this block has a projection shortcut; pass residual=True")
      for layer, layer_params in params.items():
        layer_params["conv"]["kernel"] = _identity_kernel(layer_params["conv"]["kernel"])
        if "bias" in layer_params["conv"]:
          layer_params["conv"]["bias"] = np.zeros_like(layer_params["conv"]["bias"])
        if "bn" in layer_params:
          bn = layer_params["bn"]
          bn["scale"] = np.full_like(bn["scale"], np.sqrt(1.0 + epsilon))
          bn["bias"] = np.zeros_like(bn["bias"])
          stats[layer]["bn"]["mean"] = np.zeros_like(stats[layer]["bn"]["mean"])
          stats[layer]["bn"]["var"] = np.ones_like(stats[layer]["bn"]["var"])
  return out


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {key: _to_numpy(value) for key, value in tree.items()}
  return np.array(tree)


def _copy_into(target: dict, path: tuple[str, ...], tree: Any) -> None:
  node = target
  for key in path[:-1]:
    node = node.setdefault(key, {})
  old = node.get(path[-1])
  if old is None or _shapes(old) != _shapes(tree):
    raise ModelError(f"deepen: {'/'.join(path)} has shapes {_shapes(tree)} in the shallower "
                     f"net and {None if old is None else _shapes(old)} in the deeper one; the "
                     "two nets must differ only in their block counts (same widths, stem, "
                     "classes).")
  node[path[-1]] = _to_numpy(tree)
