"""How a model fills in the parts a caller injects (`conv=`, `norm=`).

A part is a module class or a (nested) functools.partial of one. The model
decides some settings once, at the top (dtype, initialisers, BatchNorm
settings); `with_defaults` adds each of them that the part's class has as a
field, unless the caller's partial already fixes it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

ModuleDef = Any  # a Module class or a functools.partial of one


def module_class(part: ModuleDef) -> Any:
  """The class behind a module class or a (nested) functools.partial of one."""
  while isinstance(part, functools.partial):
    part = part.func
  return part


def _preset(part: ModuleDef) -> set[str]:
  """Keyword arguments a (nested) partial already fixes."""
  names: set[str] = set()
  while isinstance(part, functools.partial):
    names |= set(part.keywords)
    part = part.func
  return names


def with_defaults(part: ModuleDef, **settings: Any) -> ModuleDef:
  """`part` with those of `settings` its class takes and its partial leaves open."""
  cls = module_class(part)
  fields = ({f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls)
            else set())
  preset = _preset(part)
  settings = {k: v for k, v in settings.items() if k in fields and k not in preset}
  return functools.partial(part, **settings) if settings else part
