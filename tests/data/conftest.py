"""Fixtures for the input-pipeline tests: a prepared digits data_dir and generated image folders."""

from __future__ import annotations

import os

import numpy as np
import pytest
from data_helpers import smooth_image, write_image


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
  """A data_dir with the embedded digits dataset prepared once for the whole session.

  Overrides the suite-wide fixture: the data tests inspect what this directory
  caches, so no training run of another area may write into it.
  """
  import cnnjax.data
  data_dir = str(tmp_path_factory.mktemp("digits_data"))
  cnnjax.data.dataset_info("digits", data_dir=data_dir)
  return data_dir


@pytest.fixture(scope="session")
def folder_with_splits(tmp_path_factory) -> str:
  """train/ and val/ with 3 classes of small JPEGs of varying size."""
  root = str(tmp_path_factory.mktemp("folder_splits"))
  rng = np.random.default_rng(0)
  counts = {"train": 5, "val": 3}
  for split, count in counts.items():
    for class_name in ("ant", "bee", "cat"):
      for i in range(count):
        height, width = rng.integers(40, 64, 2)
        write_image(os.path.join(root, split, class_name, f"{i}.jpg"),
                    smooth_image(rng, height, width), quality=95)
  return root


@pytest.fixture(scope="module")
def prepared(folder_with_splits, tmp_path_factory) -> tuple[str, str]:
  """(dataset name, data_dir): the 3-class JPEG folder prepared by cnnjax (15 train, 9 val),
  once per test module (the DALI reader tests read its TFRecords)."""
  import cnnjax.data
  data_dir = str(tmp_path_factory.mktemp("prepared_folder"))
  name = "image_folder:" + folder_with_splits
  cnnjax.data.dataset_info(name, data_dir=data_dir)
  return name, data_dir
