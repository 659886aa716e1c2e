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


# ------------------------------------------------------------ fine-tuning


def _layers_of(variables: Mapping[str, Any]) -> dict[tuple[str, ...], dict[tuple[str, str], tuple]]:
  """{module path: {(collection, leaf name): shape}} over every collection."""
  layers: dict[tuple[str, ...], dict[tuple[str, str], tuple]] = {}
  for collection, tree in variables.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]:
      keys = tuple(str(getattr(key, "key", key)) for key in path)
      layers.setdefault(keys[:-1], {})[(collection, keys[-1])] = tuple(np.shape(leaf))
  return layers


def _same_layout(source: Mapping[str, Any], target: Mapping[str, Any]) -> Mapping[str, Any]:
  """The source in the target's ResNet layout (scanned stages or one block per name)."""
  from cnnjax.models.resnet import (SCANNED_KEY,  # pylint: disable=import-outside-toplevel
                                    to_scanned_variables, to_unscanned_variables)
  scanned = lambda tree: any(SCANNED_KEY in path for path in _layers_of(tree))  # noqa: E731
  if scanned(target) and not scanned(source):
    return to_scanned_variables(source)
  if scanned(source) and not scanned(target):
    return to_unscanned_variables(source)
  return source


def copy_matching_layers(target: Mapping[str, Any], source: Mapping[str, Any]
                         ) -> tuple[dict, dict[str, list[str]]]:
  """Target variables with every layer the source has at the same path and shapes copied.

  A layer is a module (conv, norm, dense) with its variables in every
  collection (params and batch statistics travel together). Layers whose
  shapes differ (a classifier for another number of classes) or that the
  source lacks keep their fresh values. Returns (variables, {"copied": [...],
  "new": [...], "unused": [...]}) with layer paths like "stage1/block1/conv1/conv".
  """
  source = _same_layout(source, target)
  target_layers, source_layers = _layers_of(target), _layers_of(source)
  copied = [path for path, leaves in target_layers.items() if source_layers.get(path) == leaves]
  take = set(copied)
  out = {}
  for collection, tree in target.items():
    def pick(path, new, collection=collection):
      keys = tuple(str(getattr(key, "key", key)) for key in path)
      if keys[:-1] not in take:
        return new
      old = source[collection]
      for key in keys:
        old = old[key]
      return np.asarray(old, dtype=np.asarray(new).dtype)
    out[collection] = jax.tree_util.tree_map_with_path(pick, dict(tree))
  name = "/".join
  report = {"copied": [name(p) for p in copied],
            "new": [name(p) for p in target_layers if p not in take],
            "unused": [name(p) for p in source_layers if p not in take]}
  return out, report


def warm_start(target: Mapping[str, Any], source: Mapping[str, Any], *,
               paper_vgg_chain: bool = False) -> tuple[dict, dict[str, list[str]]]:
  """Fine-tuning's start: `copy_matching_layers`, or VGG's net-A scheme when asked
  (`paper_vgg_chain`: a VGG target and a shallower trained VGG source)."""
  if paper_vgg_chain:
    variables, mapping = warm_start_vgg(target, source)
    report = {"copied": [f"{dst}<-{src}" for dst, src in mapping.items()],
              "new": [name for name in target["params"] if name not in mapping],
              "unused": []}
    return variables, report
  return copy_matching_layers(target, source)
