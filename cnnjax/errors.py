"""The project's own error types.

Every error that cnnjax raises on purpose derives from `CnnjaxError`, so a
caller (or a property test) can tell "cnnjax refused this input and said why"
apart from a crash deep inside JAX, TensorFlow or orbax. Each subclass also
derives from the builtin a caller would naturally catch (`ValueError`,
`KeyError`, ...), so code that predates these types keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnjaxError(Exception):
  """Base class of every error cnnjax raises deliberately."""


class ConfigError(CnnjaxError, ValueError):
  """A configuration key, value or type is invalid (names the key and the allowed values)."""


class ModelError(CnnjaxError, ValueError):
  """A model name, option or input is invalid (unknown name, wrong image shape, ...)."""


class DataError(CnnjaxError, ValueError):
  """A dataset is missing, malformed or unreadable (names the dataset, file or example)."""


class CheckpointError(CnnjaxError, RuntimeError):
  """A checkpoint is missing, corrupt, or belongs to a different run."""


class NonFiniteError(CnnjaxError, FloatingPointError):
  """Training produced a NaN or Inf (names the step and the first non-finite quantity)."""


class WorkdirLockedError(CnnjaxError, RuntimeError):
  """Another live process is writing to the same workdir."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
  """A human-readable "did you mean" fragment for error messages."""
  choices = sorted(choices)
  matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
  if matches:
    return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
  return "choose one of: " + ", ".join(choices)
