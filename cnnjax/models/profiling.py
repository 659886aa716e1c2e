"""Parameter and multiply-add counts per layer, without compiling anything.

`profile(...)` traces `model.init` under `jax.eval_shape` (shapes only, no
FLOPs spent, no XLA compile) while `nn.intercept_methods` watches every
module call. Each module that owns parameters becomes a row with its output
shape, parameter count and multiply-adds (MACs, what the papers call
"FLOPs"/"ops"). A convolution or fully connected layer costs
(output positions) x (kernel size), where the kernel size already divides
by the group count, so grouped convolutions cost 1/groups. Biases,
BatchNorm, ReLU, LRN and pooling are not counted, as in the papers.
Counts are per image (batch 1).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models import layers
from cnnjax.models.registry import create, get_spec

_LINEAR_MODULES = (nn.Conv, nn.Dense, layers.FullyConnected)


@dataclasses.dataclass(frozen=True)
class LayerRow:
  """One parameterised layer."""

  path: str
  kind: str
  output_shape: tuple[int, ...]
  params: int
  macs: int


@dataclasses.dataclass(frozen=True)
class Profile:
  """Rows in call order and the totals; `str(profile)` is a readable table."""

  name: str
  image_size: int
  rows: tuple[LayerRow, ...]
  params: int  # every parameter of the model, from the initialised tree
  macs: int  # multiply-adds of one image

  def params_under(self, prefix: str) -> int:
    """Parameters of the layers whose path starts with `prefix` (e.g. "inception4a")."""
    return sum(row.params for row in self._under(prefix))

  def macs_under(self, prefix: str) -> int:
    """Multiply-adds of the layers whose path starts with `prefix`."""
    return sum(row.macs for row in self._under(prefix))

  def _under(self, prefix: str) -> Iterable[LayerRow]:
    return (row for row in self.rows
            if row.path == prefix or row.path.startswith(prefix.rstrip("/") + "/"))

  def __str__(self) -> str:
    header = ("layer", "type", "output", "params", "MACs")
    lines = [header] + [
        (row.path, row.kind, "x".join(str(d) for d in row.output_shape),
         f"{row.params:,}", f"{row.macs:,}") for row in self.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)

    def render(line):
      return "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(line, widths)))

    body = [render(lines[0]), rule] + [render(line) for line in lines[1:]] + [rule]
    body.append(f"{self.name} at {self.image_size}x{self.image_size}: "
                f"{self.params:,} parameters, {self.macs / 1e9:.3f} G multiply-adds")
    return "\n".join(body)


def _accepts(function: Any, keyword: str) -> bool:
  try:
    return keyword in inspect.signature(function).parameters
  except (TypeError, ValueError):
    return False


def profile(name_or_module: str | nn.Module, image_size: int | None = None, *,
            in_channels: int | None = None, **create_kwargs: Any) -> Profile:
  """Per-layer parameters and multiply-adds of a registered model or any Module.

  Args:
    name_or_module: a registry name (built with `create(name, **create_kwargs)`)
      or a flax Module taking NHWC images (e.g. `nn.Conv(32, (5, 5))`).
    image_size: square input side; default the paper's (224, or 32 for CIFAR).
    in_channels: input channels; default the model's (3).
    **create_kwargs: passed to `create` when a name is given.
  """
  if isinstance(name_or_module, str):
    spec = get_spec(name_or_module)
    module = create(name_or_module, **create_kwargs)
    name = name_or_module
    image_size = spec.image_size if image_size is None else image_size
  else:
    module = name_or_module
    name = type(module).__name__
    image_size = 224 if image_size is None else image_size
  # A scanned stage traces its body once, so count the unrolled twin instead.
  if getattr(module, "scan_blocks", False):
    module = module.clone(scan_blocks=False)
  channels = in_channels or getattr(module, "in_channels", 3)
  images = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  call_kwargs = {"train": False} if _accepts(module.__call__, "train") else {}

  rows: list[LayerRow] = []

  active: list[nn.Module] = []

  def record(next_fun, args, kwargs, context):
    module_called = context.module
    # A subclass's __call__ that defers to its parent's (cpu.Conv ->
    # nn.Conv) is one layer: count the outermost call only.
    reentrant = any(module is module_called for module in active)
    active.append(module_called)
    try:
      output = next_fun(*args, **kwargs)
    finally:
      active.pop()
    if reentrant or context.method_name != "__call__" or module_called.scope is None:
      return output
    own = module_called.variables.get("params", {})
    leaves = {k: v for k, v in own.items() if hasattr(v, "shape")}
    # Rows are the leaf layers: modules whose parameters are all their own.
    if leaves and len(leaves) == len(own):
      params = sum(int(np.prod(v.shape)) for v in leaves.values())
      macs = 0
      if isinstance(module_called, _LINEAR_MODULES) and "kernel" in leaves:
        macs = int(np.prod(output.shape[1:-1])) * int(np.prod(leaves["kernel"].shape))
      rows.append(LayerRow("/".join(module_called.scope.path), type(module_called).__name__,
                           tuple(int(d) for d in output.shape[1:]), params, macs))
    return output

  def init():
    with nn.intercept_methods(record):
      return module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                         images, **call_kwargs)

  variables = jax.eval_shape(init)
  total_params = sum(int(np.prod(leaf.shape))
                     for leaf in jax.tree.leaves(variables.get("params", {})))
  return Profile(name, image_size, tuple(rows), total_params, sum(r.macs for r in rows))
