"""Keeps TensorFlow on the CPU; imported first by `cnnjax.data`.

JAX owns the accelerators. TensorFlow, which we only use for tf.data, would
otherwise reserve GPU memory as soon as its first op ran. Hiding the GPUs is
only possible before the TF runtime initialises, hence this tiny module that
the package imports before anything else.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def hide_gpus_from_tensorflow() -> None:
  """Makes every GPU invisible to TensorFlow (a no-op on tensorflow-cpu)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # The runtime was initialised before cnnjax.data was imported (someone ran
    # a TF op first). Then we can only verify that TF did not take a GPU.
    visible = tf.config.get_visible_devices("GPU")
    if visible:
      raise RuntimeError(
          "TensorFlow initialised with GPUs visible before cnnjax.data was imported; "
          "import cnnjax.data (or call tf.config.set_visible_devices([], 'GPU')) before "
          f"running any TensorFlow op. Visible: {visible}") from None


hide_gpus_from_tensorflow()
