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
  # (the training's config.input, image size) -> the paper's test scales Q for dense evaluation.
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


# Published weights each network loads through `cnnjax.weights.load(source)`,
# named "origin/architecture[.variant]" (torchvision: the weights enum's member;
# Keras: the keras.applications network). Their pixel conventions, views and
# class names live with the loaders in `cnnjax.weights`. Keras's ResNets are
# the paper's v1 (stride on the first 1x1): they load into these networks
# built with version="1".
PUBLISHED_WEIGHTS: dict[str, tuple[str, ...]] = {
    "alexnet_v2": ("torchvision/alexnet.IMAGENET1K_V1",),
    "vgg11": ("torchvision/vgg11.IMAGENET1K_V1",),
    "vgg13": ("torchvision/vgg13.IMAGENET1K_V1",),
    "vgg16": ("torchvision/vgg16.IMAGENET1K_V1", "keras/vgg16"),
    "vgg19": ("torchvision/vgg19.IMAGENET1K_V1", "keras/vgg19"),
    **{f"vgg{depth}_bn": (f"torchvision/vgg{depth}_bn.IMAGENET1K_V1",)
       for depth in (11, 13, 16, 19)},
    "googlenet_torchvision": ("torchvision/googlenet.IMAGENET1K_V1",),
    "resnet18": ("torchvision/resnet18.IMAGENET1K_V1",),
    "resnet34": ("torchvision/resnet34.IMAGENET1K_V1",),
    **{f"resnet{depth}": (f"torchvision/resnet{depth}.IMAGENET1K_V1",
                          f"torchvision/resnet{depth}.IMAGENET1K_V2", f"keras/resnet{depth}")
       for depth in (50, 101, 152)},
}


def weights_of(name: str) -> tuple[str, ...]:
  """The published weights sources of model `name` (aliases share them: vgg_d = vgg16)."""
  spec = get_spec(name)
  return tuple(source for model, sources in PUBLISHED_WEIGHTS.items()
               if _REGISTRY.get(model) == spec for source in sources)


def list_models(family: str | None = None, pattern: str | None = None,
                has_weights: bool | None = None) -> list[str]:
  """Registered names (aliases included), in natural order, optionally filtered.

  Args:
    family: keep one family ("vgg", "resnet", "cifar_resnet", "googlenet", "alexnet").
    pattern: a shell-style pattern matched against the name, e.g. "resnet*" or "*_bn".
    has_weights: True keeps the networks with published weights
      (`weights_of`, loaded by `cnnjax.weights.load`), False those without.
  """
  import fnmatch  # pylint: disable=import-outside-toplevel
  if family is not None and family not in families():
    raise ModelError(f"unknown model family {family!r}; {close_matches(family, families())}")
  names = sorted(_REGISTRY, key=_natural_key)
  if family is not None:
    names = [name for name in names if _REGISTRY[name].family == family]
  if pattern is not None:
    names = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
  if has_weights is not None:
    names = [name for name in names if bool(weights_of(name)) == has_weights]
  return names


def families() -> list[str]:
  """Every family name, sorted."""
  return sorted({spec.family for spec in _REGISTRY.values()})


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


def dense_form(model: nn.Module, name: str | None = None) -> nn.Module:
  """The fully convolutional form of `model` for dense evaluation (`ModelSpec.dense`:
  VGG's FC layers as convolutions; ResNet as it is), same variables.

  `name`: its registered name when known (else found from the module's class).
  Raises ModelError for a family that has none.
  """
  spec = get_spec(name) if name in _REGISTRY else spec_of(model)
  if spec is None or spec.dense is None:
    raise ModelError(
        f"view 'dense_multiscale' needs a fully convolutional network (VGG, whose FC layers "
        f"become convolutions, or ResNet); {type(model).__name__} is not one. Use '10crop' "
        f"(AlexNet, ResNet) or '144crop' (GoogLeNet), or 'center'.")
  return spec.dense(model)


def allowed_overrides(model: str | type[nn.Module]) -> list[str]:
  """The option keywords `create` accepts for a registered name or a module class."""
  module = get_spec(model).module if isinstance(model, str) else model
  return sorted(field.name for field in dataclasses.fields(module)
                if field.init and field.name not in _RESERVED)


# Other libraries' names for an option cnnjax spells once.
RENAMED = {
    "zero_init_residual": ("the initial residual-branch scale is residual_scale_init "
                           "(torchvision's zero_init_residual=True is residual_scale_init=0.0, "
                           "False is residual_scale_init=1.0)"),
}


def _option_hint(key: str, allowed: list[str]) -> str:
  """"did you mean ...? (options: ...)" with the options listed once."""
  import difflib  # pylint: disable=import-outside-toplevel
  matches = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
  guess = ("did you mean " + " or ".join(repr(m) for m in matches) + "? ") if matches else ""
  return f"{guess}options: {', '.join(allowed)}"


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
  if "pretrained" in overrides or "weights" in overrides:
    sources = weights_of(name)
    where = (f"published weights for {name}: " + ", ".join(repr(s) for s in sources)
             if sources else f"{name} has no published weights (models that have some: "
             "cnnjax.models.list_models(has_weights=True))")
    raise ModelError(
        f"create builds a freshly initialised network; weights come from "
        f"cnnjax.weights.load(source), which returns the model, its variables and its "
        f"preprocessing ({where}).")
  for key in overrides:
    if key in RENAMED:
      raise ModelError(f"{name} has no option {key!r}: {RENAMED[key]}.")
    if key not in allowed:
      raise ModelError(f"{name} has no option {key!r}; {_option_hint(key, allowed)}")
  kwargs = {**spec.kwargs, **overrides}
  num_classes = spec.num_classes if num_classes is None else num_classes
  # the module checks its option values as it is built (options.check_module)
  return spec.module(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **kwargs)
