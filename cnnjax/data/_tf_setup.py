"""Keeps TensorFlow on the CPU; imported first by `cnnjax.data`.

JAX owns the accelerators. TensorFlow, which we only use for tf.data, would
otherwise reserve GPU memory as soon as its first op ran. Hiding the GPUs is
only possible before the TF runtime initialises, hence this tiny module that
the package imports before anything else.
"""

from __future__ import annotations

from cnnjax._imports import import_without


def _import_tensorflow():
  """Imports TensorFlow without the Keras optimizers it would load eagerly.

  `import tensorflow` imports `keras.src.optimizers` whenever Keras is
  installed (it is a TensorFlow dependency), which pulls in Keras and
  scikit-learn: 1.2 of the 3.4 s the import takes on a 2-core machine. cnnjax
  uses only tf.data, tf.io and tf.image. TensorFlow tolerates the module
  being absent (it catches the ImportError), so it is marked absent for the
  duration of the import and then forgotten: a later `import keras` or
  `tf.keras` loads it as usual.
  """
  return import_without("tensorflow", blocked="keras.src.optimizers")


tf = _import_tensorflow()


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


# At import, not in a setup call: TF must never hold a GPU that JAX needs (no env var is touched).
hide_gpus_from_tensorflow()
