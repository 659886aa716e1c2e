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


def to_steps(config: Any, name: str, steps_per_epoch: int, *, default: int = 0) -> int:
  """The duration `<name>_steps` / `<name>_epochs` in optimiser steps.

  The step count wins when both are set; `default` when neither is.
  """
  steps = config[f"{name}_steps"]
  epochs = config[f"{name}_epochs"]
  if steps >= 0:
    return int(steps)
  if epochs >= 0:
    return int(math.ceil(epochs * steps_per_epoch))
  return default


def boundaries_to_steps(config: Any, steps_per_epoch: int) -> tuple[int, ...]:
  """`lr_boundaries_steps`, or `lr_boundaries_epochs` converted like `to_steps`."""
  if config["lr_boundaries_steps"]:
    return tuple(int(s) for s in config["lr_boundaries_steps"])
  return tuple(int(math.ceil(e * steps_per_epoch)) for e in config["lr_boundaries_epochs"])
