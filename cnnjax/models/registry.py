"""The one registry of named architectures: `create(name, ...)`, `list_models()`.

Each family contributes a table of `ModelSpec`s (module class + the keyword
arguments that make the named network). `create` validates overrides
against the module's fields, allowed option values and numeric ranges
(`cnnjax.models.options`) before building, so a typo fails here, with the
allowed names, rather than deep inside a trace.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ModelError, close_matches
from cnnjax.models import options


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one named network."""

  module: type[nn.Module]
  kwargs: Mapping[str, Any]
  family: str
  num_classes: int = 1000  # default number of classes (10 for the CIFAR networks)
  # The native input resolution: the paper's, the default image size of a run,
  # of profile and of the tables.
  image_size: int = 224
  description: str = ""
  # What training and evaluation need to know of a family, instead of
  # `if family == ...` in their code:
  # the module that evaluates densely (fully convolutionally) over whole images,
  # from the trained one (same variables); None: the family cannot.
  dense: Callable[[nn.Module], nn.Module] | None = None
  # (training config, image size) -> the paper's test scales Q for dense evaluation.
  dense_scales: Callable[[Mapping[str, Any], int], tuple[int, ...]] | None = None
  # (fresh variables, a trained shallower net's variables) -> (variables with
  # the trained layers copied in, {destination: source}); VGG's start from net A.
  warm_start: Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[dict, dict]] | None = None
  # Keyword overrides for `profile` and the model table (e.g. no auxiliary heads).
  profile_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}
# Fields a caller never sets through `create` (Flax's own, or the signature's).
_RESERVED = {"parent", "name", "num_classes", "dtype", "param_dtype"}


def register(name: str, spec: ModelSpec) -> None:
  """Adds `spec` under `name` (used by the family modules at import time)."""
  if name in _REGISTRY:
    raise ModelError(f"model {name!r} is registered twice")
  _REGISTRY[name] = spec


def _natural_key(name: str) -> tuple[Any, ...]:
  """"resnet18" < "resnet101": digit runs compare as numbers."""
  return tuple(int(part) if part.isdigit() else part
               for part in re.split(r"(\d+)", name))


def list_models() -> list[str]:
  """Every registered name (aliases included), in natural order."""
  return sorted(_REGISTRY, key=_natural_key)


def get_spec(name: str) -> ModelSpec:
  """The `ModelSpec` registered under `name`; ModelError with close matches if none."""
  if name not in _REGISTRY:
    raise ModelError(f"unknown model {name!r}; {close_matches(name, _REGISTRY)}")
  return _REGISTRY[name]


def spec_of(model: nn.Module) -> ModelSpec | None:
  """The first registered spec built from `model`'s class (its family's hooks), or None."""
  for name in list_models():
    if isinstance(model, _REGISTRY[name].module):
      return _REGISTRY[name]
  return None


def allowed_overrides(model: str | type[nn.Module]) -> list[str]:
  """The option keywords `create` accepts for a registered name or a module class."""
  module = get_spec(model).module if isinstance(model, str) else model
  return sorted(field.name for field in dataclasses.fields(module)
                if field.init and field.name not in _RESERVED)


def create(name: str, *, num_classes: int | None = None, dtype: Any = jnp.float32,
           param_dtype: Any = jnp.float32, **overrides: Any) -> nn.Module:
  """Builds the registered network `name` as a flax.linen Module.

  Args:
    name: one of `list_models()`.
    num_classes: classifier outputs; default 1000, or 10 for the CIFAR networks.
    dtype: computation dtype (e.g. jnp.bfloat16); BatchNorm statistics and the
      returned logits stay float32.
    param_dtype: parameter dtype (float32 for mixed precision).
    **overrides: any field of the family's module (see `allowed_overrides`),
      e.g. `width_multiplier=0.25`, `bn_group_size=32`, `scan_blocks=True`;
      the parts take callables: `activation=nn.gelu` (or a name),
      `norm=functools.partial(nn.GroupNorm, num_groups=8)` (or None),
      `conv=...`, `max_pool=...`, e.g. `**cnnjax.models.cpu.parts()`.

  Returns:
    A Module called as `model.apply(variables, images_nhwc, train=..., features=...)`.
  """
  spec = get_spec(name)
  allowed = allowed_overrides(spec.module)
  for key in overrides:
    if key not in allowed:
      raise ModelError(
          f"{name} has no option {key!r}; {close_matches(key, allowed)} "
          f"(options: {', '.join(allowed)})")
  kwargs = {**spec.kwargs, **overrides}
  num_classes = spec.num_classes if num_classes is None else num_classes
  options.check(name, {**kwargs, "num_classes": num_classes},
                getattr(spec.module, "CHOICES", {}))
  return spec.module(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **kwargs)
