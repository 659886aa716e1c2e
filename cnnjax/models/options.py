"""The values a model option may take.

Every model checks its own fields once, as it is built (`layers.ConvNet`'s
`__post_init__`), so `create` and a module built directly give the same
errors before anything is traced.
Enumerated options are a model's `CHOICES`; `activation` takes one of its
names or any callable; `conv`, `norm` and `max_pool` take callables (a
module class or partial; `norm` also None); numeric options must lie in
`RANGES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cnnjax.errors import ModelError


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _at_least_one(value: Any) -> bool:
  return _is_int(value) and value >= 1


def _positive(value: Any) -> bool:
  return _is_real(value) and value > 0


def _fraction(value: Any) -> bool:
  return _is_real(value) and 0 <= value < 1


# option -> (test, the valid range in words)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_classes": (_at_least_one, "an integer >= 1"),
    "in_channels": (_at_least_one, "an integer >= 1 (3 for RGB)"),
    "width": (_at_least_one, "an integer >= 1 (channels of the first stage)"),
    "fc_features": (_at_least_one, "an integer >= 1"),
    "pool_window": (_at_least_one, "an integer >= 1 (pixels; AlexNet's is 3)"),
    "pool_stride": (_at_least_one, "an integer >= 1 (pixels; AlexNet's is 2)"),
    "width_multiplier": (_positive, "a number > 0 (1.0 is the paper's width)"),
    "dropout_rate": (_fraction, "a number in [0, 1)"),
    "aux_dropout_rate": (_fraction, "a number in [0, 1)"),
    "bn_momentum": (_fraction, "a number in [0, 1): the running averages keep this "
                               "fraction each step (0.9 = PyTorch's momentum=0.1)"),
    "bn_epsilon": (_positive, "a number > 0 (it keeps 1/sqrt(var + eps) finite); the "
                              "papers' networks use 1e-5 (1e-3 for GoogLeNet-BN)"),
    "bn_group_size": (lambda v: v is None or _at_least_one(v),
                      "None (the whole batch) or an integer >= 1 (examples per "
                      "BatchNorm group)"),
    "residual_scale_init": (lambda v: v == "inverse_sqrt_blocks" or (_is_real(v) and v >= 0),
                            "a number >= 0 (1.0 is the paper's initialisation, 0 is "
                            "torchvision's zero_init_residual) or 'inverse_sqrt_blocks'"),
    "stage_sizes": (lambda v: isinstance(v, Sequence) and len(v) >= 1
                    and all(_at_least_one(n) for n in v),
                    "a non-empty sequence of block counts, each an integer >= 1"),
}

# Options that take a callable; True where None (no such layer) is allowed too.
PARTS: dict[str, bool] = {"conv": False, "norm": True, "max_pool": False}
# Enumerated options that also take a callable in place of a name.
CALLABLE_CHOICES = ("activation",)


def check(model: str, values: Mapping[str, Any],
          choices: Mapping[str, Sequence[Any]]) -> None:
  """Raises ModelError for the first option in `values` its rules refuse."""
  for key, value in values.items():
    if key in PARTS:
      if value is None and PARTS[key]:
        continue
      if not callable(value):
        none = " or None" if PARTS[key] else ""
        raise ModelError(f"{model}: {key}={value!r} must be a module class or a "
                         f"functools.partial of one{none}.")
    if key in choices and not (key in CALLABLE_CHOICES and callable(value)):
      if value not in choices[key]:
        callable_ok = ", or a callable" if key in CALLABLE_CHOICES else ""
        raise ModelError(f"{model}: {key}={value!r} is not allowed; choose one of "
                         f"{', '.join(repr(c) for c in choices[key])}{callable_ok}.")
    if key in RANGES:
      test, allowed = RANGES[key]
      if not test(value):
        raise ModelError(f"{model}: {key}={value!r} is out of range; it must be {allowed}.")


def check_module(module: Any) -> None:
  """`check` of every field of a model module (its class's `CHOICES`)."""
  values = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")}
  check(type(module).__name__, values, getattr(type(module), "CHOICES", {}))
