"""Superseded by `cnnjax.train.device_input`; kept while the loop still imports it.

`DevicePhotometric(...)` builds the equivalent `DeviceInput` (distortions
plus per-channel normalisation). Delete this module once nothing imports it.
"""

from __future__ import annotations

from cnnjax.train.device_input import DeviceInput, Photometric


def DevicePhotometric(*, brightness: float, contrast: float, saturation: float, hue: float,  # noqa: N802
                      mean, std) -> DeviceInput:
  return DeviceInput(mean=mean, std=std, photometric=Photometric(brightness, contrast, saturation, hue))
