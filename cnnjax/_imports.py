"""Importing a library without one of its optional, heavy imports.

Some libraries import a large optional dependency only to name a type or to
register an extra they tolerate being absent (they catch its ImportError).
`import_without(module, blocked)` marks `blocked` absent for the duration of
the import and then forgets it, so a later explicit `import` of it loads it
as usual. Used where measured (benchmarks/RESULTS.md, "Start-up").
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from types import ModuleType

_no_change = contextlib.nullcontext


# Modules whose shared libraries print notices to stderr while loading (TensorFlow: absl's
# "All log messages before absl::InitializeLog()", the oneDNN and CPU-feature notices).
NOISY_WHEN_LOADING = frozenset({"tensorflow"})


def import_without(module: str, blocked: str) -> ModuleType:
  """`importlib.import_module(module)`, with `blocked` unimportable while it runs.

  The first import of a module of NOISY_WHEN_LOADING runs with its native
  notices kept off stderr (`cnnjax.logs.native_notices_silenced`).
  """
  if module in sys.modules or blocked in sys.modules:
    return importlib.import_module(module)
  from cnnjax import logs  # pylint: disable=g-import-not-at-top
  quiet = logs.native_notices_silenced() if module in NOISY_WHEN_LOADING else _no_change()
  sys.modules[blocked] = None  # type: ignore[assignment]
  try:
    with quiet:
      return importlib.import_module(module)
  finally:
    if sys.modules.get(blocked, 0) is None:
      del sys.modules[blocked]


# The import names each extra of pyproject.toml provides (only top-level
# packages, so checking one imports nothing: `importlib.util.find_spec`).
EXTRAS = {
    "train": ("optax", "orbax", "etils", "filelock", "ml_collections", "absl", "tqdm",
              "tensorboardX", "tensorflow", "tensorflow_datasets", "sklearn", "PIL", "psutil",
              "google_crc32c"),
    "weights": ("safetensors", "h5py"),
    "torch": ("torch", "torchvision", "safetensors"),
    "notebooks": ("matplotlib",),
    "dali": ("nvidia",),
}


class MissingExtraError(ImportError):
  """A part of cnnjax was imported without the extra that installs its dependencies."""


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
  """The import names of `extra` (or `modules` of it) that are not installed."""
  from importlib.util import find_spec  # pylint: disable=g-import-not-at-top
  return [name for name in (modules or EXTRAS[extra]) if find_spec(name) is None]


def require(extra: str, user: str, modules: tuple[str, ...] | None = None) -> None:
  """Raises MissingExtraError naming `extra` and the pip command if any of its modules is absent.

  `user` names what needs them (e.g. "cnnjax.train"); `modules` narrows the
  check to those of the extra's packages `user` imports.
  """
  absent = missing(extra, modules)
  if absent:
    raise MissingExtraError(
        f"{user} needs the [{extra}] extra, which is not installed here (missing: "
        f"{', '.join(absent)}); install it with: pip install \"cnnjax[{extra}]\"")
