"""VGG's warm starts: a deeper net begins from a trained net A; a net from
the same configuration's trained net (the paper's training-scale chain).

Same configuration (Sec. 3.1, "Training image size"): the S=384 net is
initialised with the trained S=256 net of the same configuration, and the
scale-jittered nets by fine-tuning all layers of the S=384 one. When source
and target have the same layers with the same shapes, every layer is
copied (`same_architecture`), BatchNorm statistics included.

Net A into a deeper net:

Simonyan & Zisserman (Sec. 3.1): "we initialised the first four
convolutional layers and the last three fully-connected layers with the
layers of net A (the intermediate layers were initialised randomly)". A's
first four conv layers are conv1_1 (3->64), conv2_1 (64->128), conv3_1
(128->256) and conv3_2 (256->256); in a deeper net each lands on the first
layer, in order, with the same kernel shape (conv1_1, conv2_1, conv3_1,
conv3_2 for B..E), which is the only placement where the weights fit. The
three FC layers match by shape at the end of the net.

Layers are the top-level entries of the params tree (each holds a 'kernel'
somewhere below); their order is the natural order of their names
(conv1_1 < conv1_2 < conv2_1 < ... < fc6 < fc7 < fc8).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cnnjax.errors import CheckpointError

NUM_CONV_LAYERS = 4
NUM_FC_LAYERS = 3


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _kernel_shape(layer) -> tuple[int, ...] | None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(layer)[0]:
    if getattr(path[-1], "key", None) == "kernel":
      return tuple(np.shape(leaf))
  return None


def _layers(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
  """(conv layer names, dense layer names) in network order."""
  convs, denses = [], []
  for name in sorted(params, key=_natural_key):
    shape = _kernel_shape(params[name])
    if shape is None:
      continue
    (convs if len(shape) == 4 else denses if len(shape) == 2 else []).append(name)
  return convs, denses


def vgg_layer_mapping(source_params: Mapping[str, Any],
                      target_params: Mapping[str, Any]) -> dict[str, str]:
  """{target layer: source layer} for the paper's warm start (see the module docstring)."""
  src_convs, src_denses = _layers(source_params)
  dst_convs, dst_denses = _layers(target_params)
  if len(src_convs) < NUM_CONV_LAYERS or len(src_denses) < NUM_FC_LAYERS:
    raise CheckpointError(
        f"the warm-start source has {len(src_convs)} conv and {len(src_denses)} dense layers; "
        f"a trained VGG has at least {NUM_CONV_LAYERS} and {NUM_FC_LAYERS}")
  mapping: dict[str, str] = {}
  cursor = 0
  for src in src_convs[:NUM_CONV_LAYERS]:
    shape = _kernel_shape(source_params[src])
    while cursor < len(dst_convs) and _kernel_shape(target_params[dst_convs[cursor]]) != shape:
      cursor += 1
    if cursor == len(dst_convs):
      raise CheckpointError(
          f"no layer of the target net takes the source's {src} (kernel {shape}); is the source "
          "a VGG of the same width (and in_channels) as the target?")
    mapping[dst_convs[cursor]] = src
    cursor += 1
  for src, dst in zip(src_denses[-NUM_FC_LAYERS:], dst_denses[-NUM_FC_LAYERS:]):
    a, b = _kernel_shape(source_params[src]), _kernel_shape(target_params[dst])
    if a != b:
      raise CheckpointError(
          f"FC layer {src} of the source has kernel {a} but the target's {dst} has {b}: the "
          "source was trained with another num_classes, fc_features or input size")
    mapping[dst] = src
  return mapping


def same_architecture(source_params: Mapping[str, Any], target_params: Mapping[str, Any]) -> bool:
  """Whether the two parameter trees have the same layers, leaves and shapes."""
  shapes = lambda tree: {  # noqa: E731
      jax.tree_util.keystr(path): tuple(np.shape(leaf))
      for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]}
  return shapes(source_params) == shapes(target_params)


def warm_start_vgg(target: Mapping[str, Any], source: Mapping[str, Any]) -> tuple[dict, dict[str, str]]:
  """Target variables with the mapped layers copied from the source variables.

  Both are {"params": ..., "batch_stats"?: ...}; BatchNorm statistics of a
  copied layer travel with it. A source of the same configuration gives
  every layer (the fine-tuning chain); otherwise net A's layers are mapped
  (`vgg_layer_mapping`). Returns (new variables, mapping).
  """
  if same_architecture(source["params"], target["params"]):
    mapping = {name: name for name in target["params"]}
  else:
    mapping = vgg_layer_mapping(source["params"], target["params"])
  out = {}
  for collection, tree in target.items():
    tree = dict(tree)
    for dst, src in mapping.items():
      if dst in tree and src in source.get(collection, {}):
        tree[dst] = jax.tree_util.tree_map(
            lambda new, old: np.asarray(old, dtype=np.asarray(new).dtype).reshape(np.shape(new)),
            tree[dst], source[collection][src])
    out[collection] = tree
  return out, mapping
