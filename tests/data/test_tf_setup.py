"""cnnjax.data imports TensorFlow without Keras, and leaves Keras importable."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import sys
import cnnjax.data
assert "tensorflow" in sys.modules
loaded = sorted(m for m in ("keras", "keras.src.optimizers", "sklearn") if m in sys.modules)
assert not loaded, loaded
import keras.src.optimizers  # absent only during TensorFlow's import
import tensorflow as tf
assert tf.keras.optimizers.SGD is not None
print("ok")
"""


def test_tensorflow_is_imported_without_keras_which_stays_importable():
  completed = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                             timeout=300, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert completed.stdout.strip().endswith("ok")
