"""Suite-wide settings and fixtures. Per-area fixtures live in each area's own conftest."""

import os
import sys

import pytest

# Quiet TensorFlow's C++ logging and keep it (and JAX) on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The CUDA build of torch pulls in triton when torchvision is imported, and
# triton's bundled LLVM segfaults in a process that has already loaded
# TensorFlow (`import tensorflow; import torchvision` crashes). The suite
# imports both; the CPU tests never need triton, so make it unimportable:
# torch then reports "no triton" and carries on.
sys.modules.setdefault("triton", None)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
  """A data_dir with the embedded digits dataset prepared once for the session."""
  import cnnjax.data  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("digits_data"))
  cnnjax.data.dataset_info("digits", data_dir=data_dir)
  return data_dir
