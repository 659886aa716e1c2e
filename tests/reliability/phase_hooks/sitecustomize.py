"""Phase markers for the kill tests, loaded into `python train.py` through PYTHONPATH.

Inactive unless CNNJAX_TEST_PHASES is set. Then, once `cnnjax.train.loop`
is imported, the run prints a line to stdout as it enters each phase the
kill tests aim at:

  PHASE step <n>              after the n-th train step of this process has computed
  PHASE eval                  entering a validation pass
  PHASE save <step> <kind>    a checkpoint save starts (kind: latest or best)
  PHASE commit <step>         orbax is about to rename a complete temporary save

and sleeps CNNJAX_TEST_PAUSE seconds (default 0.5) in the phase named by
CNNJAX_TEST_PHASES (comma separated), so that a SIGKILL sent at a random
moment of that window lands inside it. For "save" the sleep happens both in
the main thread, after the asynchronous save has started, and in orbax's
background thread just before its atomic rename, so the kill hits a save
whose files are written but not committed. Nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

_PHASES = frozenset(p for p in os.environ.get("CNNJAX_TEST_PHASES", "").split(",") if p)
_ACTIVE = "CNNJAX_TEST_PHASES" in os.environ
_PAUSE = float(os.environ.get("CNNJAX_TEST_PAUSE", "0.5"))


def _mark(phase: str, *details) -> None:
  print("PHASE", phase, *details, flush=True)
  sys.stdout.flush()


def _pause(phase: str) -> None:
  if phase in _PHASES:
    time.sleep(_PAUSE)


def _patch_loop(loop) -> None:
  """Wraps the loop's train step, evaluation and checkpoint save."""
  import jax  # pylint: disable=import-outside-toplevel

  real_jit_steps = loop.steps.jit_for_mesh
  counter = {"steps": 0}

  def jit_steps(*args, **kwargs):
    train, evaluate, after_validation = real_jit_steps(*args, **kwargs)

    def train_with_marker(state, batch):
      out = jax.block_until_ready(train(state, batch))
      counter["steps"] += 1
      _mark("step", counter["steps"])
      _pause("step")
      return out
    return train_with_marker, evaluate, after_validation

  loop.steps.jit_for_mesh = jit_steps

  real_evaluate = loop.evaluate_split

  def evaluate(*args, **kwargs):
    _mark("eval")
    _pause("eval")
    return real_evaluate(*args, **kwargs)

  loop.evaluate_split = evaluate

  store_class = loop.ckpt_lib.CheckpointStore
  real_save = store_class.save

  def save(self, arrays, meta, *, best=False):
    _mark("save", int(meta["step"]), "best" if best else "latest")
    result = real_save(self, arrays, meta, best=best)
    _pause("save")
    return result

  store_class.save = save
  _patch_orbax_commit()


def _patch_orbax_commit() -> None:
  """Sleeps in orbax's background thread between writing a save and renaming it."""
  try:
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  cls = getattr(atomicity, "AtomicRenameTemporaryPath", None)
  if cls is None or not hasattr(cls, "finalize"):
    return
  real_finalize = cls.finalize

  def before_commit(self):
    final = getattr(self, "_final_path", None)
    _mark("commit", getattr(final, "name", "?"))
    _pause("save")

  import inspect  # pylint: disable=import-outside-toplevel
  if inspect.iscoroutinefunction(real_finalize):  # orbax >= 0.11.17 or so
    async def finalize(self, *args, **kwargs):
      before_commit(self)
      return await real_finalize(self, *args, **kwargs)
  else:
    def finalize(self, *args, **kwargs):
      before_commit(self)
      return real_finalize(self, *args, **kwargs)

  cls.finalize = finalize


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Runs `_patch_loop` right after `cnnjax.train.loop` has been executed."""
  target = "cnnjax.train.loop"

  def __init__(self):
    self._spec = None

  def find_spec(self, fullname, path=None, target=None):
    if fullname != self.target or self._spec is not None:
      return None
    sys.meta_path.remove(self)
    try:
      spec = importlib.util.find_spec(fullname)
    finally:
      sys.meta_path.insert(0, self)
    if spec is None:
      return None
    self._spec = spec
    self._real_loader = spec.loader
    spec.loader = self
    return spec

  def create_module(self, spec):
    return self._real_loader.create_module(spec)

  def exec_module(self, module):
    self._real_loader.exec_module(module)
    _patch_loop(module)


if _ACTIVE:
  sys.meta_path.insert(0, _AfterImport())
