"""Training: config validation, optimiser, pure steps, sharding, checkpoints, the loop.

    from cnnjax.train import run
    run(config, workdir)          # what `python train.py` calls

Submodules are layered so an accelerator host runs the whole loop without
ml_collections, and imports TensorFlow only where data is read:
  losses, metrics, optim, durations, state, steps, checkpoint   jax, flax, optax, orbax
  setup, memory                                                 + cnnjax.models
  config (validate -> Settings), loop (run), inputs             + cnnjax.data for tfds datasets

`run` and `restore_for_eval` are imported lazily, on first use.
"""

from cnnjax import _imports

_imports.require("train", "cnnjax.train", ("optax", "orbax", "etils", "filelock"))

__all__ = ["restore_for_eval", "run"]


def __getattr__(name):
  if name == "run":
    from cnnjax.train.loop import run  # pylint: disable=g-import-not-at-top
    return run
  if name == "restore_for_eval":
    from cnnjax.train.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top
    return restore_for_eval
  raise AttributeError(f"module 'cnnjax.train' has no attribute {name!r}")
