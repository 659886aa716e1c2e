"""Keras applications' weights as cnnjax models: the VGG and ResNet authors' own networks.

    from cnnjax.interop import keras as keras_import
    model, variables = keras_import.load("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    logits = model.apply(variables, rgb_0_255 - np.array(keras_import.CAFFE_MEAN_RGB), train=False)

`keras.applications.VGG16/VGG19` carry the Oxford group's Caffe weights of
networks D and E; `ResNet50/101/152` the original MSRA Caffe weights of
ResNet v1 (stride 2 on the first 1x1 of a bottleneck). Each maps onto the
cnnjax network of the same architecture:

* `vgg16`, `vgg19` -> "vgg16"/"vgg19" (VGG D/E). Keras flattens pool5 in
  H, W, C order, as cnnjax's fc6 does, so every kernel is copied as it is.
* `resnet50/101/152` -> "resnet50/101/152" with `version="1"` and BatchNorm
  epsilon 1.001e-5 (Keras's). Keras's convolutions carry a bias before each
  BatchNorm; BN(conv(x) + b) with running mean m equals BN(conv(x)) with
  running mean m - b, so the bias is folded into the statistics and the
  network keeps cnnjax's bias-free convolutions (exact in evaluation, and in
  training the batch mean absorbs a bias anyway).

Pixels: Keras's `preprocess_input` ("caffe" mode) turns RGB 0..255 into BGR
and subtracts the Caffe ImageNet mean (103.939, 116.779, 123.68) in that
order. The import reverses the input channels of the first convolution, so
the cnnjax network takes RGB like every other one, minus the same mean in
RGB order (`CAFFE_MEAN_RGB`); the outputs are unchanged.

Files: the `.h5` files keras.applications downloads (weights by layer name),
a model saved with `model.save("x.h5")`, Keras 3's `model.save_weights(
"x.weights.h5")` and `model.save("x.keras")`. Keras 3 names the layers of a
weights file by class and position ("conv2d_7"), so those are matched
through each architecture's layer order (`keras_layer_order`). Reading needs
h5py only: no TensorFlow, no Keras.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.errors import CheckpointError, ModelError, close_matches
# Caffe's ImageNet mean, as keras.applications' preprocess_input subtracts it (BGR).
from cnnjax.preprocessing.imagenet import CAFFE_MEAN_BGR, CAFFE_MEAN_RGB  # noqa: F401
from cnnjax.interop.state_dict import (abstract_variables, flatten_tree,
                                       unflatten_tree)

KERAS_RESNET_BN_EPSILON = 1.001e-5

VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
RESNET_STAGES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
                 "resnet152": (3, 8, 36, 3)}
SUPPORTED = tuple(VGG_BLOCKS) + tuple(RESNET_STAGES)
# keras.applications' constructor of each network.
APPLICATIONS = {"vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50",
                "resnet101": "ResNet101", "resnet152": "ResNet152"}

CONV, BN, DENSE = "Conv2D", "BatchNormalization", "Dense"
# Keras's order of each layer class's weights.
WEIGHT_NAMES = {CONV: ("kernel", "bias"), DENSE: ("kernel", "bias"),
                BN: ("gamma", "beta", "moving_mean", "moving_variance")}
# Keras 3 names a weights file's layers by class, snake case, numbered in order.
KERAS3_KEYS = {CONV: "conv2d", BN: "batch_normalization", DENSE: "dense"}

# {layer name: {weight name ("kernel", "gamma", ...): array}}
KerasWeights = dict[str, dict[str, np.ndarray]]


def keras_layer_order(name: str) -> list[tuple[str, str]]:
  """(layer name, class) of the layers with weights, in `model.layers` order."""
  if name in VGG_BLOCKS:
    layers = [(f"block{block}_conv{index}", CONV)
              for block, count in enumerate(VGG_BLOCKS[name], start=1)
              for index in range(1, count + 1)]
    return layers + [("fc1", DENSE), ("fc2", DENSE), ("predictions", DENSE)]
  if name in RESNET_STAGES:
    layers = [("conv1_conv", CONV), ("conv1_bn", BN)]
    for stage, blocks in enumerate(RESNET_STAGES[name], start=2):
      for block in range(1, blocks + 1):
        prefix = f"conv{stage}_block{block}"
        # Keras builds a block's projection after its 3x3 conv, and sorts it there.
        order = ("1", "2", "0", "3") if block == 1 else ("1", "2", "3")
        convs = [(f"{prefix}_{part}_conv", CONV) for part in order]
        bns = [(f"{prefix}_{part}_bn", BN) for part in order]
        if block == 1:  # 1_conv 1_bn 2_conv 2_bn 0_conv 3_conv 0_bn 3_bn
          layers += [convs[0], bns[0], convs[1], bns[1], convs[2], convs[3], bns[2], bns[3]]
        else:
          layers += [item for pair in zip(convs, bns) for item in pair]
    return layers + [("predictions", DENSE)]
  raise ModelError(f"no Keras import for {name!r}; {close_matches(name, SUPPORTED)}")


# ---------------------------------------------------------------- reading files


def read_keras_weights(path: str | os.PathLike, name: str) -> KerasWeights:
  """{layer name: {weight name: array}} from a Keras weights or model file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"weights file {path!r} does not exist.")
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise CheckpointError(f"reading Keras weights ({path!r}) needs h5py: "
                          "pip install 'cnnjax[weights]'.") from error
  try:
    if zipfile.is_zipfile(path):  # a .keras archive: config, metadata and model.weights.h5
      with zipfile.ZipFile(path) as archive:
        if "model.weights.h5" not in archive.namelist():
          raise CheckpointError(f"{path!r} is a zip archive without model.weights.h5; "
                                "is it a .keras file?")
        # h5py reads a file-like object through Python calls, slowly (ResNet-152: 25 s);
        # from a file on disk it takes a fraction of a second.
        with tempfile.TemporaryDirectory() as directory:
          extracted = archive.extract("model.weights.h5", directory)
          with h5py.File(extracted, "r") as f:
            return _read_h5(f, name, path)
    with h5py.File(path, "r") as f:
      return _read_h5(f, name, path)
  except OSError as error:
    raise CheckpointError(f"cannot read {path!r} as a Keras HDF5 weights file: {error}") from error


def _decode(value) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_h5(f, name: str, path: str) -> KerasWeights:
  order = keras_layer_order(name)
  if "layers" in f and "layer_names" not in f.attrs:  # Keras 3: layers/<class>_<n>/vars/<i>
    counters: dict[str, int] = {}
    out: KerasWeights = {}
    for layer, cls in order:
      index = counters.get(cls, 0)
      counters[cls] = index + 1
      key = KERAS3_KEYS[cls] + (f"_{index}" if index else "")
      if key not in f["layers"]:
        raise CheckpointError(
            f"{path!r} has no layer {key!r} (Keras {name}'s {layer}); is it a weights file of "
            f"keras.applications.{APPLICATIONS[name]}?")
      variables = f["layers"][key].get("vars", {})
      out[layer] = {weight: np.asarray(variables[str(i)])
                    for i, weight in enumerate(WEIGHT_NAMES[cls]) if str(i) in variables}
    return out
  group = f["model_weights"] if "model_weights" in f else f  # model.save("x.h5") nests them
  if "layer_names" not in group.attrs:
    raise CheckpointError(f"{path!r} is neither a Keras 3 weights file nor a Keras HDF5 "
                          "weights file (no 'layers' group, no 'layer_names' attribute).")
  out = {}
  for layer in (_decode(n) for n in group.attrs["layer_names"]):
    weight_names = [_decode(n) for n in group[layer].attrs.get("weight_names", [])]
    if weight_names:  # "conv1_bn/gamma:0" (Keras 2) or "gamma" (Keras 3)
      out[layer] = {weight.split("/")[-1].split(":")[0]: np.asarray(group[layer][weight])
                    for weight in weight_names}
  return out


def fetch_keras_weights(name: str) -> KerasWeights:
  """The published weights through keras.applications' own download and cache
  (~/.keras/models, or $KERAS_HOME/models), read from the built network."""
  if name not in APPLICATIONS:
    raise ModelError(f"no Keras import for {name!r}; {close_matches(name, SUPPORTED)}")
  try:
    import keras  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise CheckpointError(
        f"fetching Keras's {name} weights by name needs keras (pip install keras "
        f"tensorflow); or pass the .h5 file keras.applications downloads "
        f"(path=...), which reads with h5py alone.") from error
  try:
    network = getattr(keras.applications, APPLICATIONS[name])(weights="imagenet")
  except Exception as error:  # download errors surface as several exception types
    raise CheckpointError(
        f"keras.applications.{APPLICATIONS[name]}(weights='imagenet') failed "
        f"({type(error).__name__}: {error}); download the weights file once where there is a "
        f"network and pass it (path=...).") from error
  return {layer.name: {weight.path.split("/")[-1]: np.asarray(weight.numpy())
                       for weight in layer.weights}
          for layer in network.layers if layer.weights}


# ---------------------------------------------------------------- mapping


def _named(weights: KerasWeights, layer: str, cls: str, name: str) -> dict[str, np.ndarray]:
  if layer not in weights:
    raise CheckpointError(f"Keras {name}: missing layer {layer!r}. Is this the right "
                          "architecture name, or a truncated file?")
  found = weights[layer]
  missing = [w for w in WEIGHT_NAMES[cls] if w not in found]
  if missing:
    raise CheckpointError(f"Keras {name}: layer {layer!r} lacks {missing} (it has "
                          f"{list(found)}); is it a {cls} of keras.applications?")
  return found


def _rules(name: str) -> list[tuple[str, str, tuple[str, ...]]]:
  """(Keras layer, class, cnnjax module path) of every layer with weights."""
  rules = []
  if name in VGG_BLOCKS:
    for block, count in enumerate(VGG_BLOCKS[name], start=1):
      for index in range(1, count + 1):
        rules.append((f"block{block}_conv{index}", CONV, (f"conv{block}_{index}", "conv")))
    rules += [("fc1", DENSE, ("fc6",)), ("fc2", DENSE, ("fc7",)), ("predictions", DENSE, ("fc8",))]
    return rules
  rules = [("conv1_conv", CONV, ("stem", "conv")), ("conv1_bn", BN, ("stem", "bn"))]
  for stage, blocks in enumerate(RESNET_STAGES[name], start=2):
    for block in range(1, blocks + 1):
      prefix, path = f"conv{stage}_block{block}", (f"stage{stage - 1}", f"block{block}")
      for part in ("0", "1", "2", "3") if block == 1 else ("1", "2", "3"):
        module = path + (("shortcut",) if part == "0" else (f"conv{part}",))
        rules += [(f"{prefix}_{part}_conv", CONV, module + ("conv",)),
                  (f"{prefix}_{part}_bn", BN, module + ("bn",))]
  return rules + [("predictions", DENSE, ("fc",))]


def _flax_leaves(weights: KerasWeights, name: str) -> dict[tuple[str, ...], tuple[str, np.ndarray]]:
  """{(collection, *path, leaf): (Keras source, array)} before shape checks."""
  leaves: dict[tuple[str, ...], tuple[str, np.ndarray]] = {}
  is_resnet = name in RESNET_STAGES
  first_conv = "conv1_conv" if is_resnet else "block1_conv1"
  for layer, cls, path in _rules(name):
    found = _named(weights, layer, cls, name)
    if cls == BN:
      bias_of_conv = leaves.pop(("conv_bias",) + path[:-1], (None, 0.0))[1]
      leaves[("params",) + path + ("scale",)] = (f"{layer}/gamma", found["gamma"])
      leaves[("params",) + path + ("bias",)] = (f"{layer}/beta", found["beta"])
      leaves[("batch_stats",) + path + ("mean",)] = (
          f"{layer}/moving_mean", found["moving_mean"] - bias_of_conv)
      leaves[("batch_stats",) + path + ("var",)] = (f"{layer}/moving_variance",
                                                    found["moving_variance"])
      continue
    kernel = found["kernel"]
    if layer == first_conv:
      kernel = kernel[:, :, ::-1, :]  # BGR -> RGB input channels
    leaves[("params",) + path + ("kernel",)] = (f"{layer}/kernel", kernel)
    if is_resnet and cls == CONV:  # folded into the next BatchNorm's mean
      leaves[("conv_bias",) + path[:-1]] = (f"{layer}/bias", found["bias"])
    else:
      leaves[("params",) + path + ("bias",)] = (f"{layer}/bias", found["bias"])
  stray = [source for key, (source, _) in leaves.items() if key[0] == "conv_bias"]
  if stray:
    raise CheckpointError(f"Keras {name}: conv biases {stray} have no BatchNorm to fold into.")
  return leaves


def load(name: str, source: str | os.PathLike | Mapping[str, Mapping[str, np.ndarray]] | None = None, *,
         dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, **overrides: Any):
  """A cnnjax model built as keras.applications builds `name`, and its variables.

  Args:
    name: "vgg16", "vgg19", "resnet50", "resnet101" or "resnet152".
    source: a Keras weights/model file (.h5, .weights.h5, .keras), a mapping
      {layer name: {weight name: array}} as `read_keras_weights` returns, or None to fetch
      the published weights through keras.applications (needs keras).
    dtype, param_dtype: as `cnnjax.models.create`; batch statistics stay float32.
    **overrides: further `cnnjax.models.create` options (e.g.
      `fully_convolutional=True` for VGG dense evaluation, `scan_blocks=True`).

  Returns:
    (model, variables): `model.apply(variables, rgb - CAFFE_MEAN_RGB,
    train=False)` equals Keras's logits on `preprocess_input(rgb)`.
  """
  if name not in APPLICATIONS:
    raise ModelError(f"no Keras import for {name!r}; {close_matches(name, SUPPORTED)} "
                     f"(supported: {', '.join(SUPPORTED)})")
  if "num_classes" in overrides:
    raise ModelError(f"Keras {name}: num_classes is read from the file (the classifier's "
                     "kernel); do not pass it.")
  if source is None:
    weights = fetch_keras_weights(name)
  elif isinstance(source, Mapping):
    weights = dict(source)
  else:
    weights = read_keras_weights(source, name)
  leaves = _flax_leaves(weights, name)
  overrides = dict(overrides)
  scan_blocks = overrides.pop("scan_blocks", False)
  classifier = ("params", "fc8" if name in VGG_BLOCKS else "fc", "kernel")
  num_classes = int(leaves[classifier][1].shape[-1])
  kwargs: dict[str, Any] = {}
  if name in VGG_BLOCKS:
    kwargs["fc_features"] = int(leaves[("params", "fc7", "kernel")][1].shape[-1])
  else:
    kwargs.update(version="1", shortcut="B", bn_epsilon=KERAS_RESNET_BN_EPSILON)
  model = models.create(name, num_classes=num_classes, dtype=dtype, param_dtype=param_dtype,
                        **{**kwargs, **overrides})
  expected = flatten_tree(abstract_variables(model.clone(scan_blocks=False) if scan_blocks
                                             else model))
  unexpected = [source for path, (source, _) in leaves.items() if path not in expected]
  if unexpected:
    raise CheckpointError(f"Keras {name}: no layer of the cnnjax model takes {unexpected[:6]}; "
                          "is this the right architecture name?")
  missing = ["/".join(path) for path in expected if path not in leaves]
  if missing:
    raise CheckpointError(f"Keras {name}: nothing in the file fills {missing[:6]}; "
                          "is this the right architecture name, or a truncated file?")
  filled = {}
  for path, (source_name, array) in leaves.items():
    want = tuple(expected[path].shape)
    if tuple(array.shape) != want:
      raise CheckpointError(
          f"Keras {name}: {source_name!r} has shape {tuple(array.shape)} but "
          f"{'/'.join(path)} needs {want}. Is this the right architecture (or was the Keras "
          f"network built with another input_shape / classes)?")
    filled[path] = jnp.asarray(np.asarray(array, dtype=expected[path].dtype))
  variables = unflatten_tree(filled)
  if scan_blocks:
    model = model.clone(scan_blocks=True)
    variables = models.to_scanned_variables(variables)
  return model, jax.tree.map(jnp.asarray, variables)


__all__ = ["CAFFE_MEAN_BGR", "CAFFE_MEAN_RGB", "SUPPORTED", "fetch_keras_weights",
           "keras_layer_order", "load", "read_keras_weights"]
