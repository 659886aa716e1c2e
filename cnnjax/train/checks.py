"""What every settings subtree checks the same way: names, types, ranges, choices.

A subtree is a frozen dataclass (`OptimizerSettings` in `cnnjax.train.optim`,
`InputSettings` in `cnnjax.train.inputs`, ...) whose field defaults are the
reference: a value must have its default's type, an int must fit the int32
counters of the compiled step, a float must be finite. `build` makes a
subtree from a mapping (a ConfigDict section, a config.json section) and
runs those checks, then the subtree's own `check()`. Errors name the full
path (`config.optimizer.learning_rate`) and, for a misspelt name, the close
matches. Needs nothing but the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from cnnjax.errors import ConfigError, close_matches

INT32_RANGE = (-2**31, 2**31 - 1)
SEED_RANGE = (0, 2**32 - 1)  # JAX keys hold 32 bits: a larger seed would wrap around

_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), tuple: (tuple, list)}


def require(condition: bool, path: str, value: Any, allowed: str) -> None:
  """ConfigError naming `config.<path>`, the value and what is allowed, unless `condition`."""
  if not condition:
    raise ConfigError(f"config.{path}={value!r} is not allowed: {allowed}")


def choose(path: str, value: Any, allowed: tuple[str, ...]) -> None:
  """ConfigError unless `value` is one of `allowed`, with the close matches."""
  if value not in allowed:
    raise ConfigError(f"config.{path}={value!r} is not one of {allowed}: "
                      f"{close_matches(str(value), allowed)}")


def is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_mapping(value: Any) -> bool:
  return isinstance(value, Mapping) or hasattr(value, "to_dict")


def plain(value: Any) -> Any:
  """A ConfigDict, mappingproxy or list as plain dicts and tuples (recursively)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def frozen(value: Any) -> Any:
  """A plain value made read-only: dicts become mappingproxies, lists tuples."""
  if isinstance(value, Mapping):
    return types.MappingProxyType({k: frozen(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return tuple(frozen(v) for v in value)
  return value


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of the settings subtrees: values frozen once made, a `check()` of their own."""

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, (Mapping, list, tuple)):
        object.__setattr__(self, field.name, frozen(plain(value)))

  def check(self) -> None:
    """The subtree's own rules (ranges, choices, combinations); ConfigError when broken."""


def default_of(field: dataclasses.Field) -> Any:
  if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
    return field.default_factory()  # type: ignore[misc]
  return field.default


def _check_type(path: str, value: Any, default: Any) -> None:
  expected = type(default)
  if expected is bool or isinstance(value, bool):
    ok = isinstance(value, bool) and expected is bool
  elif is_mapping(default):
    ok = is_mapping(value)
  else:
    ok = isinstance(value, _TYPES.get(expected, (expected,)))
  if not ok:
    raise ConfigError(f"config.{path} must be of type {expected.__name__} (default {default!r}), "
                      f"got {type(value).__name__} {value!r}")


def _check_range(path: str, value: Any, default: Any) -> None:
  """Integers fit the int32 counters of the compiled step; floats are finite."""
  if isinstance(default, bool) or not is_number(value):
    return
  if isinstance(default, int):
    low, high = SEED_RANGE if path.endswith(".seed") else INT32_RANGE
    if not low <= value <= high:
      raise ConfigError(f"config.{path}={value} is outside [{low}, {high}]")
  elif not math.isfinite(value):
    raise ConfigError(f"config.{path}={value!r} must be a finite number")


def unknown_key(path: str, key: str, known) -> ConfigError:
  where = f"config.{path}" if path else "config"
  return ConfigError(f"unknown config key {key!r} in {where}: {close_matches(key, known)}")


def build(cls, given: Any, path: str, *, strict: bool = True):
  """An instance of the settings dataclass `cls` from the mapping `given`, checked.

  strict: every field must be given (a recipe starts from the full base
  config); otherwise a missing field takes its default (a stored config.json
  of an older version).
  """
  if not is_mapping(given):
    raise ConfigError(f"config.{path or '<root>'} must be a group of settings, got "
                      f"{type(given).__name__} {given!r}")
  given = plain(given)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  for key in given:
    if key not in fields:
      raise unknown_key(path, key, fields)
  values = {}
  for name, field in fields.items():
    default = default_of(field)
    where = f"{path}.{name}" if path else name
    if name not in given:
      if strict:
        raise ConfigError(f"config key {where!r} is missing; start recipes from "
                          "cnnjax.configs.base.get_base_config()")
      values[name] = default
      continue
    value = given[name]
    if dataclasses.is_dataclass(default):
      values[name] = build(type(default), value, where, strict=strict)
      continue
    _check_type(where, value, default)
    _check_range(where, value, default)
    values[name] = value
  settings = cls(**values)
  settings.check()
  return settings


def to_dict(settings: Any) -> dict[str, Any]:
  """A settings tree as nested plain dicts and lists (what config.json holds)."""
  out = {}
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    if dataclasses.is_dataclass(value):
      out[field.name] = to_dict(value)
    else:
      out[field.name] = _jsonable(value)
  return out


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def defaults(cls) -> dict[str, Any]:
  """The dataclass's defaults as nested plain dicts (what a base ConfigDict starts from)."""
  out = {}
  for field in dataclasses.fields(cls):
    default = default_of(field)
    out[field.name] = defaults(type(default)) if dataclasses.is_dataclass(default) else default
  return out
