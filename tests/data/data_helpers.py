"""Helpers shared by the input-pipeline tests (generated images)."""

from __future__ import annotations

import os

import numpy as np


def write_image(path: str, array: np.ndarray, mode: str | None = None, **save_kwargs) -> None:
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode=mode).save(path, **save_kwargs)


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Random smooth RGB content (JPEG-friendly, like a photograph)."""
  from PIL import Image
  coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
