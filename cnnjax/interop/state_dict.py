"""Reading PyTorch state dicts and mapping them onto Flax variable trees.

A state dict is a flat mapping "features.0.weight" -> array. `read_state_dict`
accepts one as a dict (numpy arrays or torch tensors), or a file: `.pth` /
`.pt` (read with `torch.load(..., weights_only=True)`, which refuses
arbitrary pickled objects) or `.safetensors`.

`convert` fills a Flax variables tree from a state dict through a list of
`Layer` rules (torch module prefix -> Flax module path, and how its tensors
change layout), refusing any key that no rule consumes, any rule whose
tensor is absent, and any shape that disagrees, each time naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import CheckpointError

StateDict = dict[str, np.ndarray]
FlaxPath = tuple[str, ...]

# Bookkeeping tensors a state dict carries that have no role in the forward pass.
IGNORED_SUFFIXES = (".num_batches_tracked",)
# Wrappers that prefix every key (nn.DataParallel / DistributedDataParallel).
WRAPPER_PREFIXES = ("module.",)


def read_state_dict(source: Mapping[str, Any] | str | os.PathLike) -> StateDict:
  """A state dict as {name: float32/int numpy array}, from a mapping or a file.

  Files: `.pth`/`.pt`/`.bin` via `torch.load(path, map_location="cpu",
  weights_only=True)` (plain unpickling could run code), `.safetensors` via
  the safetensors library. A checkpoint that wraps the weights under
  "state_dict" or "model" is unwrapped; a "module." prefix on every key
  (data-parallel wrappers) is dropped.
  """
  if isinstance(source, (str, os.PathLike)):
    source = _read_file(os.fspath(source))
  if not isinstance(source, Mapping):
    raise CheckpointError(
        f"expected a state dict (a mapping of names to arrays) or a .pth/.safetensors "
        f"path; got {type(source).__name__}.")
  for wrapper in ("state_dict", "model"):
    if wrapper in source and isinstance(source[wrapper], Mapping):
      source = source[wrapper]
  state = {str(key): _to_numpy(key, value) for key, value in source.items()}
  for prefix in WRAPPER_PREFIXES:
    if state and all(key.startswith(prefix) for key in state):
      state = {key[len(prefix):]: value for key, value in state.items()}
  return state


def _read_file(path: str) -> Mapping[str, Any]:
  if not os.path.exists(path):
    raise CheckpointError(f"weights file {path!r} does not exist.")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise CheckpointError(
          f"reading {path!r} needs the safetensors package (not PyTorch): "
          f"pip install 'cnnjax[weights]'.") from error
    try:
      return load_file(path)
    except Exception as error:  # safetensors raises its own error types
      if "bfloat16" not in str(error):
        raise CheckpointError(f"cannot read safetensors file {path!r}: {error}") from error
    # numpy has no bfloat16: let torch read it and widen it.
    try:
      from safetensors.torch import load_file as load_torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      raise CheckpointError(
          f"{path!r} holds bfloat16 tensors, which numpy cannot represent; reading them needs "
          f"PyTorch: pip install 'cnnjax[torch]'.") from error
    return load_torch(path)
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise CheckpointError(
        f"reading {path!r} needs PyTorch (pip install 'cnnjax[torch]'), or save the "
        f"weights as .safetensors, which reads without it.") from error
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
    raise CheckpointError(
        f"cannot read {path!r} as a weights-only PyTorch checkpoint ({error}); "
        f"only tensors and plain containers are accepted.") from error


def _to_numpy(key: str, value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16
    return value.numpy()
  try:
    return np.asarray(value)
  except Exception as error:
    raise CheckpointError(f"state dict entry {key!r} is not an array: {type(value).__name__}") from error


# --------------------------------------------------------------- layer rules


@dataclasses.dataclass(frozen=True)
class Layer:
  """One torch module mapped onto one Flax module.

  kind:
    "conv": weight OIHW -> kernel HWIO, bias -> bias.
    "dense": weight (out, in) -> kernel (in, out), bias -> bias.
    "dense_after_flatten": like "dense", but torch flattened a [C, H, W] map
      and Flax flattens [H, W, C]; `spatial` = (H, W) of that map.
    "bn": weight -> scale, bias -> bias (params); running_mean -> mean,
      running_var -> var (batch_stats).
  """

  torch_prefix: str
  flax_path: FlaxPath
  kind: str
  spatial: tuple[int, int] | None = None


# Large tensors change layout through XLA (tiled, multi-threaded, on the
# accelerator when there is one): numpy's strided copy of VGG's 100M-entry
# fc6 takes seconds. Small ones go through numpy, which needs no compilation.
LARGE_TENSOR = 1 << 22


def _conv_kernel(weight):
  return weight.transpose(2, 3, 1, 0)


def _dense_kernel(weight):
  return weight.T


@dataclasses.dataclass(frozen=True)
class _DenseAfterFlattenKernel:
  """(out, C*H*W) torch weight -> (H*W*C, in) Flax kernel; hashable for jit."""

  spatial: tuple[int, int]

  def __call__(self, weight):
    height, width = self.spatial
    out_features, in_features = weight.shape
    if in_features % (height * width):
      raise ValueError(f"{in_features} inputs are not a multiple of {height}x{width}")
    channels = in_features // (height * width)
    chw = weight.reshape(out_features, channels, height, width)
    return chw.transpose(2, 3, 1, 0).reshape(height * width * channels, out_features)


def _identity(array):
  return array


def _leaf_rules(layer: Layer):
  """(torch key, flax collection, flax path, converter) for each tensor of `layer`."""
  prefix, path = layer.torch_prefix, layer.flax_path
  if layer.kind == "conv":
    return [(f"{prefix}.weight", "params", path + ("kernel",), _conv_kernel),
            (f"{prefix}.bias", "params", path + ("bias",), _identity)]
  if layer.kind in ("dense", "dense_after_flatten"):
    kernel = (_dense_kernel if layer.kind == "dense"
              else _DenseAfterFlattenKernel(tuple(layer.spatial)))
    return [(f"{prefix}.weight", "params", path + ("kernel",), kernel),
            (f"{prefix}.bias", "params", path + ("bias",), _identity)]
  if layer.kind == "bn":
    return [(f"{prefix}.weight", "params", path + ("scale",), _identity),
            (f"{prefix}.bias", "params", path + ("bias",), _identity),
            (f"{prefix}.running_mean", "batch_stats", path + ("mean",), _identity),
            (f"{prefix}.running_var", "batch_stats", path + ("var",), _identity)]
  raise ValueError(f"unknown layer kind {layer.kind!r}")


def flatten_tree(tree: Mapping[str, Any], prefix: FlaxPath = ()) -> dict[FlaxPath, Any]:
  """{("params", "conv1", "conv", "kernel"): leaf, ...} of a nested mapping."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten_tree(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def unflatten_tree(flat: Mapping[FlaxPath, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def convert(state: StateDict, layers: Iterable[Layer], expected: Mapping[str, Any], *,
            model_name: str) -> dict[str, Any]:
  """Fills the variables tree shaped like `expected` from `state` via `layers`.

  `expected` is the abstract variables tree (e.g. `jax.eval_shape` of
  `model.init`): its leaves give the shapes to check against and the dtypes
  to convert to (param_dtype for params, float32 for batch statistics). A torch tensor
  that maps to a Flax leaf the model does not have (a conv bias where the
  model has none) is an unexpected key; a Flax leaf no torch tensor fills
  is a missing key. Either, or a shape mismatch, raises CheckpointError
  naming the torch key.
  """
  targets = flatten_tree(expected)
  rules = {}
  for layer in layers:
    for torch_key, collection, path, converter in _leaf_rules(layer):
      rules[torch_key] = ((collection,) + path, converter)

  filled: dict[FlaxPath, jax.Array] = {}
  unexpected = []
  for torch_key, tensor in state.items():
    if torch_key.endswith(IGNORED_SUFFIXES):
      continue
    if torch_key not in rules or rules[torch_key][0] not in targets:
      unexpected.append(torch_key)
      continue
    flax_path, converter = rules[torch_key]
    want_shape = tuple(targets[flax_path].shape)
    try:
      converted = jax.eval_shape(converter, jax.ShapeDtypeStruct(tensor.shape, tensor.dtype))
    except ValueError as error:
      raise CheckpointError(
          f"{model_name}: state dict entry {torch_key!r} has shape {tuple(tensor.shape)}, "
          f"which cannot become {'/'.join(flax_path)} of shape {want_shape} ({error}).") from error
    if converted.shape != want_shape:
      raise CheckpointError(
          f"{model_name}: state dict entry {torch_key!r} has shape {tuple(tensor.shape)}, "
          f"but {'/'.join(flax_path)} needs {want_shape} after conversion (torch layout "
          f"{_torch_shape_hint(torch_key, want_shape)}). Is this the right architecture?")
    filled[flax_path] = _convert_leaf(converter, tensor, targets[flax_path].dtype)
  if unexpected:
    raise CheckpointError(
        f"{model_name}: unexpected state dict key(s) {_listing(unexpected)}: no layer of the "
        f"cnnjax model takes them. Is this the right architecture name?")

  reverse = {path: torch_key for torch_key, (path, _) in rules.items()}
  missing = [path for path in targets if path not in filled]
  if missing:
    names = [reverse.get(path, "/".join(path)) for path in missing]
    raise CheckpointError(
        f"{model_name}: missing state dict key(s) {_listing(names)} (needed for "
        f"{'/'.join(missing[0])}). Is this the right architecture name, or a truncated file?")
  return unflatten_tree(filled)


def abstract_variables(model) -> dict[str, Any]:
  """The variables tree `model.init` would make, as shapes only (no compute).

  ResNets are traced in their scanned layout (one block per stage instead of
  up to 36, so ResNet-152 traces in a fraction of the time) and unscanned by
  the models' own layout conversion, applied to zero-stride stand-ins.
  """
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  keys = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
  scannable = getattr(model, "scan_blocks", None) is False
  traced = model.clone(scan_blocks=True) if scannable else model
  shapes = jax.eval_shape(lambda x: traced.init(keys, x, train=False), images)
  if not scannable:
    return shapes
  stand_ins = jax.tree.map(lambda leaf: np.broadcast_to(np.zeros((), leaf.dtype), leaf.shape),
                           shapes)
  unscanned = models.to_unscanned_variables(stand_ins)
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), unscanned)


def convert_leaf(converter, tensor: np.ndarray, dtype) -> jax.Array:
  """`converter(tensor)` as a `dtype` array (large tensors change layout through XLA)."""
  return _convert_leaf(converter, tensor, dtype)


def _convert_leaf(converter, tensor: np.ndarray, dtype) -> jax.Array:
  if tensor.size >= LARGE_TENSOR:
    return _convert_on_device(converter, tensor, dtype)
  return jnp.asarray(np.ascontiguousarray(converter(np.asarray(tensor)), dtype=dtype))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _convert_on_device(converter, tensor, dtype):
  return converter(tensor).astype(dtype)


def _torch_shape_hint(torch_key: str, flax_shape: tuple[int, ...]) -> str:
  if torch_key.endswith(".weight") and len(flax_shape) == 4:
    height, width, in_channels, out_channels = flax_shape
    return f"(out, in, kh, kw) = {(out_channels, in_channels, height, width)}"
  if torch_key.endswith(".weight") and len(flax_shape) == 2:
    return f"(out, in) = {flax_shape[::-1]}"
  return str(flax_shape)


def _listing(keys: list[str], limit: int = 6) -> str:
  shown = ", ".join(repr(key) for key in keys[:limit])
  return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
