"""Importing a library without one of its optional, heavy imports.

Some libraries import a large optional dependency only to name a type or to
register an extra they tolerate being absent (they catch its ImportError).
`import_without(module, blocked)` marks `blocked` absent for the duration of
the import and then forgets it, so a later explicit `import` of it loads it
as usual. Used where measured (benchmarks/RESULTS.md, "Start-up").
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_without(module: str, blocked: str) -> ModuleType:
  """`importlib.import_module(module)`, with `blocked` unimportable while it runs."""
  if module in sys.modules or blocked in sys.modules:
    return importlib.import_module(module)
  sys.modules[blocked] = None  # type: ignore[assignment]
  try:
    return importlib.import_module(module)
  finally:
    if sys.modules.get(blocked, 0) is None:
      del sys.modules[blocked]
