"""The one place that turns durations into optimiser steps.

Recipes speak the paper's unit: AlexNet and VGG count epochs, the CIFAR
ResNets count iterations. A duration is a pair of settings `<name>_steps`
(int, -1 = unset) / `<name>_epochs` (float, -1 = unset) in its subtree
(`run.num_steps` / `run.num_epochs`, `eval.every_steps` / `eval.every_epochs`,
...); the step count wins when both are set, so `--config.run.num_steps=100`
shortens any recipe.
"""

from __future__ import annotations

import math
from typing import Any

from cnnjax.errors import ConfigError

# Step counters are int32 inside the compiled step.
MAX_STEPS = 2**31 - 1


def _checked(steps: float, key: str, value: Any) -> int:
  if not math.isfinite(steps) or steps > MAX_STEPS:
    raise ConfigError(
        f"config.{key}={value!r} is {steps:.3g} steps, more than the {MAX_STEPS} a run can count")
  return int(steps)


def to_steps(steps: int, epochs: float, steps_per_epoch: int, *, name: str,
             default: int = 0) -> int:
  """The duration `<name>_steps` / `<name>_epochs` in optimiser steps.

  name: the settings' path without the suffix ("run.num", "eval.every"), for errors.
  The step count wins when both are set; `default` when neither is.
  """
  if steps >= 0:
    return _checked(steps, f"{name}_steps", steps)
  if epochs >= 0:
    return _checked(math.ceil(epochs * steps_per_epoch) if math.isfinite(epochs) else epochs,
                    f"{name}_epochs", epochs)
  return default


def boundaries_to_steps(steps: tuple[int, ...], epochs: tuple[float, ...], steps_per_epoch: int,
                        *, name: str) -> tuple[int, ...]:
  """Boundaries in steps, or in epochs converted like `to_steps`."""
  if steps:
    return tuple(_checked(s, f"{name}_steps", s) for s in steps)
  return tuple(_checked(math.ceil(e * steps_per_epoch) if math.isfinite(e) else e,
                        f"{name}_epochs", e) for e in epochs)


def check_pair(steps: int, epochs: float, name: str) -> None:
  """A duration pair holds -1 (unset) or a count >= 0."""
  if steps < -1:
    raise ConfigError(f"config.{name}_steps={steps!r} is not allowed: -1 (unset) or >= 0")
  if not (epochs == -1 or epochs >= 0):
    raise ConfigError(f"config.{name}_epochs={epochs!r} is not allowed: -1 (unset) or >= 0")
