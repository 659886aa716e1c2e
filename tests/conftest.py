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

# Generated-image helpers (tests/data/data_helpers.py) serve every area's tests.
_DATA_HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
if _DATA_HELPERS not in sys.path:
  sys.path.insert(0, _DATA_HELPERS)


@pytest.fixture(scope="session", autouse=True)
def suite_compilation_cache(tmp_path_factory):
  """One persistent compilation cache per test process, fresh every session.

  Many tests build the same small programs (a tiny run's train step, a
  model's forward pass) in new jit objects, which JAX's in-memory cache does
  not share; the disk cache does. Measured on the 2-core machine, three
  training test files: 292 -> 223 CPU-s. (A read from it still counts as a
  build for `benchmarks.gpu_check.CompileCounter`, so tests/train/
  test_compile_once.py counts the same either way.)
  """
  from cnnjax.train.compilation_cache import enable_compilation_cache  # pylint: disable=import-outside-toplevel
  enable_compilation_cache(str(tmp_path_factory.mktemp("jax_cache")))
  yield


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
  """A data_dir with the embedded digits dataset prepared once for the session."""
  import cnnjax.data  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path_factory.mktemp("digits_data"))
  cnnjax.data.dataset_info("digits", data_dir=data_dir)
  return data_dir
