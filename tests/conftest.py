"""Suite-wide settings. Per-area fixtures live in each area's own conftest."""

import os

# Quiet TensorFlow's C++ logging and keep it (and JAX) on the CPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
