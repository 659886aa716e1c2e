"""Training: config validation, optimiser, pure steps, sharding, checkpoints, the loop.

    from cnnjax.train import run
    run(config, workdir)          # what `python train.py` calls

Submodules are layered so an accelerator host can import the step without
TensorFlow or ml_collections:
  losses, metrics, optim, durations, state, steps, checkpoint   jax, flax, optax, orbax
  setup                                                                  + cnnjax.models
  config (validation), loop (run)                                        + ml_collections, cnnjax.data

`run` and `restore_for_eval` are imported lazily, on first use.
"""

__all__ = ["restore_for_eval", "run"]


def __getattr__(name):
  if name == "run":
    from cnnjax.train.loop import run  # pylint: disable=g-import-not-at-top
    return run
  if name == "restore_for_eval":
    from cnnjax.train.checkpoint import restore_for_eval  # pylint: disable=g-import-not-at-top
    return restore_for_eval
  raise AttributeError(f"module 'cnnjax.train' has no attribute {name!r}")
