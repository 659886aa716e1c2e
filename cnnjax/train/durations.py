"""The one place that turns durations into optimiser steps.

Recipes speak the paper's unit: AlexNet and VGG count epochs, the CIFAR
ResNets count iterations. A duration `<name>` is the config pair
`<name>_steps` (int, -1 = unset) / `<name>_epochs` (float, -1 = unset); the
step count wins when both are set, so `--config.num_steps=100` shortens any
recipe. Needs no ml_collections: any mapping with these keys works.
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


def to_steps(config: Any, name: str, steps_per_epoch: int, *, default: int = 0) -> int:
  """The duration `<name>_steps` / `<name>_epochs` in optimiser steps.

  The step count wins when both are set; `default` when neither is.
  """
  steps = config[f"{name}_steps"]
  epochs = config[f"{name}_epochs"]
  if steps >= 0:
    return _checked(steps, f"{name}_steps", steps)
  if epochs >= 0:
    return _checked(math.ceil(epochs * steps_per_epoch) if math.isfinite(epochs) else epochs,
                    f"{name}_epochs", epochs)
  return default


def boundaries_to_steps(config: Any, steps_per_epoch: int) -> tuple[int, ...]:
  """`lr_boundaries_steps`, or `lr_boundaries_epochs` converted like `to_steps`."""
  if config["lr_boundaries_steps"]:
    return tuple(_checked(s, "lr_boundaries_steps", s) for s in config["lr_boundaries_steps"])
  return tuple(_checked(math.ceil(e * steps_per_epoch) if math.isfinite(e) else e,
                        "lr_boundaries_epochs", e) for e in config["lr_boundaries_epochs"])
