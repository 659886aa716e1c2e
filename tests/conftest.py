"""Suite-wide settings. Per-area fixtures live in each area's own conftest."""

import os
import sys

# Quiet TensorFlow's C++ logging and keep it (and JAX) on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The CUDA build of torch pulls in triton when torchvision is imported, and
# triton's bundled LLVM segfaults in a process that has already loaded
# TensorFlow (`import tensorflow; import torchvision` crashes). The suite
# imports both; the CPU tests never need triton, so make it unimportable:
# torch then reports "no triton" and carries on.
sys.modules.setdefault("triton", None)
