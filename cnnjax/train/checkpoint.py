"""Checkpoints of a workdir: orbax CheckpointManager, async, keep-N plus the best.

Layout of a workdir:

  config.json              the resolved run config (model, num_classes, steps, ...)
  checkpoints/<step>/      the latest `keep_checkpoints` states
  best/<step>/             the state with the lowest validation top-1 error so far
    params/                orbax pytree: float32 parameters
    batch_stats/           BatchNorm running statistics (absent without BN)
    ema_params/            Polyak/EMA parameters (absent when ema_decay = 0)
    opt_state/             optax state: momentum, injected learning rate, ...
    progress/              step, rng, lr_control (plateau / warm-up state)
    meta/                  JSON: step, data position, best error, model, structure
    cnnjax_manifest.json   size and SHA-256 of every file above
  corrupt_checkpoints/     damaged checkpoints moved aside on resume (see below)

The data position of a checkpoint is its step: `cnnjax.data.train_iterator
(start_step=step)` yields the batches an uninterrupted run would have seen
next. Restoring takes an abstract target carrying the current mesh's
shardings, so a run saved on 8 devices resumes on 1 or 64.

Saves are asynchronous: `save` returns once the arrays are copied off the
devices (so the train step may donate them right away) and writing continues
in the background; `wait()` blocks until it is on disk. No pickle: arrays go
to tensorstore, metadata to JSON.

Integrity: just before orbax commits a save (its atomic rename), the step
directory gets `cnnjax_manifest.json` with the size and SHA-256 of every
item file (`checkpoint_integrity`). A resuming run verifies the newest
checkpoint and falls back to the previous intact one, moving damaged ones
to <workdir>/corrupt_checkpoints/; evaluation restores refuse damaged ones.

`restore_for_eval(workdir)` is the entry point for evaluation code: it needs
no optimiser, no dataset and no TensorFlow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax.errors import CheckpointError, CnnjaxError
from cnnjax.train import checkpoint_integrity as integrity

STATE_ITEMS = ("params", "batch_stats", "ema_params", "opt_state", "progress")
META_ITEM = "meta"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
QUARANTINE_DIR = "corrupt_checkpoints"
CONFIG_FILE = "config.json"
# Items every checkpoint has (checked even when a checkpoint has no manifest).
REQUIRED_ITEMS = ("params", META_ITEM)

log = logging.getLogger(__name__)


def _manifested_temporary_path_class():
  """orbax's atomic-rename save, with cnnjax_manifest.json written just before the rename.

  The manifest (size + SHA-256 of every item file, see checkpoint_integrity)
  thus commits atomically with the checkpoint. None when this orbax has no
  such hook; checkpoints are then saved without manifests.
  """
  try:
    from orbax.checkpoint.path import atomicity  # pylint: disable=g-import-not-at-top
    base = atomicity.AtomicRenameTemporaryPath
  except (ImportError, AttributeError):
    return None

  class ManifestedTemporaryPath(base):  # pylint: disable=missing-class-docstring
    async def finalize(self, *args, **kwargs):
      await asyncio.to_thread(integrity.write_manifest, os.fspath(self.get()))
      return await super().finalize(*args, **kwargs)

  return ManifestedTemporaryPath


_TEMPORARY_PATH_CLASS = _manifested_temporary_path_class()


def checkpoint_problem(step_dir: str) -> str | None:
  """What is wrong with a committed checkpoint directory; None when intact."""
  return integrity.find_problem(step_dir, required_items=REQUIRED_ITEMS)


def _path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def structure(tree) -> dict[str, list[int]]:
  """{path: shape} of every array leaf: what must match for a restore to make sense."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(path): list(np.shape(leaf)) for path, leaf in flat}


def state_items(arrays: Mapping[str, Any]) -> dict[str, Any]:
  """A TrainState's arrays grouped into checkpoint items, empty ones left out."""
  items = {
      "params": arrays["params"],
      "batch_stats": arrays["batch_stats"],
      "ema_params": arrays["ema_params"],
      "opt_state": arrays["opt_state"],
      "progress": {"step": arrays["step"], "rng": arrays["rng"], "lr_control": arrays["lr_control"]},
  }
  return {name: tree for name, tree in items.items() if jax.tree_util.tree_leaves(tree)}


def arrays_from_items(items: Mapping[str, Any], like: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `state_items`; fields absent from `items` keep their value in `like`."""
  out = dict(like)
  for name in ("params", "batch_stats", "ema_params", "opt_state"):
    if name in items:
      out[name] = items[name]
  if "progress" in items:
    out.update(items["progress"])
  return out


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  handlers = {name: ocp.StandardCheckpointHandler() for name in STATE_ITEMS}
  handlers[META_ITEM] = ocp.JsonCheckpointHandler()
  return handlers


def _manager(directory: str, max_to_keep: int, *, read_only: bool = False,
             async_save: bool = True) -> ocp.CheckpointManager:
  extra = {}
  if _TEMPORARY_PATH_CLASS is not None and not read_only:
    extra["temporary_path_class"] = _TEMPORARY_PATH_CLASS
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,  # leftovers of a save killed mid-way
      **extra)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=_item_handlers())


def _steps_in(directory: str) -> list[int]:
  """Committed checkpoint steps under a manager directory, without creating anything.

  orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` when a save is
  complete, so only all-digit names count.
  """
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def has_checkpoint(workdir: str) -> bool:
  return bool(_steps_in(os.path.join(workdir, LATEST_DIR)))


class CheckpointStore:
  """The two managers of a workdir: latest N and best-by-validation-error."""

  def __init__(self, workdir: str, keep: int = 3, *, async_save: bool = True):
    self.workdir = workdir
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), keep, async_save=async_save)
    self.best = _manager(os.path.join(workdir, BEST_DIR), 1, async_save=async_save)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def newest_restorable_step(self) -> int | None:
    """The newest intact periodic checkpoint (None when there is none at all).

    Damaged newer checkpoints (missing, truncated or altered files, see
    checkpoint_integrity) are moved to <workdir>/corrupt_checkpoints with a
    warning naming both steps. When every checkpoint is damaged nothing is
    moved and CheckpointError says what is wrong: starting over is the
    user's decision.
    """
    directory = os.fspath(self.latest.directory)
    damaged = []
    for step in sorted(_steps_in(directory), reverse=True):
      problem = checkpoint_problem(os.path.join(directory, str(step)))
      if problem is None:
        break
      damaged.append((step, problem))
    else:
      if damaged:
        details = "; ".join(f"step {step}: {problem}" for step, problem in damaged)
        raise CheckpointError(
            f"no intact checkpoint in {directory} ({details}). Restore the files, or move "
            f"{directory} away to start from scratch")
      return None
    quarantine = os.path.join(self.workdir, QUARANTINE_DIR)
    for bad_step, problem in damaged:
      # Every process verified the same shared files; one moves them.
      if jax.process_index() == 0:
        moved = integrity.quarantine(os.path.join(directory, str(bad_step)), quarantine)
        log.warning("checkpoint step %d in %s is damaged (%s); moved it to %s and resume from "
                    "step %d", bad_step, directory, problem, moved, step)
    if damaged:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices("cnnjax_checkpoint_quarantine")
      self.latest.reload()
    return step

  def save(self, arrays: Mapping[str, Any], meta: Mapping[str, Any], *, best: bool = False) -> None:
    """Saves a state (arrays as from TrainState.arrays()) at meta['step'].

    The caller guarantees the state is finite; the train step never produces
    a non-finite state (it keeps the previous one).
    """
    step = int(meta["step"])
    items = state_items(arrays)
    meta = dict(meta, items=sorted(items), structure={k: structure(v) for k, v in items.items()})
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()},
                              **{META_ITEM: ocp.args.JsonSave(meta)})
    manager = self.best if best else self.latest
    if step in manager.all_steps():
      return
    manager.save(step, args=args, force=True)

  def read_meta(self, step: int | None = None, *, best: bool = False) -> dict[str, Any]:
    manager = self.best if best else self.latest
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {manager.directory}")
    with _read_errors_named(manager.directory, step):
      return dict(manager.restore(step, args=ocp.args.Composite(
          **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM])

  def restore(self, abstract_arrays: Mapping[str, Any], step: int | None = None, *,
              best: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, meta) of a checkpoint, placed on the shardings of `abstract_arrays`."""
    manager = self.best if best else self.latest
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint to restore in {manager.directory}")
    meta = self.read_meta(step, best=best)
    target = state_items(abstract_arrays)
    check_structure(meta, target, where=f"{manager.directory}/{step}")
    with _read_errors_named(manager.directory, step):
      restored = manager.restore(step, args=ocp.args.Composite(
          **{k: ocp.args.StandardRestore(v) for k, v in target.items()}))
    return arrays_from_items(restored, abstract_arrays), meta

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


@contextlib.contextmanager
def _read_errors_named(directory, step: int):
  """Whatever orbax or TensorStore raise while reading a checkpoint, as a CheckpointError.

  A checkpoint with a manifest is verified before it is read; one without
  (deleted, or saved by an older cnnjax) shows damage only here.
  """
  try:
    yield
  except CnnjaxError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (TensorStore, JSON, KeyError, ...)
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    raise CheckpointError(
        f"cannot read checkpoint step {step} in {directory}: {type(error).__name__}: "
        f"{first_line}. Its files are damaged or incomplete: move {directory}/{step} away to "
        "resume from an older checkpoint") from error


def check_structure(meta: Mapping[str, Any], target_items: Mapping[str, Any], *, where: str) -> None:
  """CheckpointError unless the checkpoint holds exactly the target's items and shapes."""
  stored = meta.get("structure", {})
  wanted = {k: structure(v) for k, v in target_items.items()}
  if sorted(stored) != sorted(wanted):
    raise CheckpointError(
        f"the checkpoint {where} holds items {sorted(stored)} but this run needs "
        f"{sorted(wanted)} (EMA, BatchNorm or the schedule differ): use the config it was "
        "trained with, or a fresh --workdir")
  for item in wanted:
    a, b = stored[item], wanted[item]
    if a != b:
      missing = [p for p in b if p not in a][:3]
      extra = [p for p in a if p not in b][:3]
      shapes = [f"{p}: stored {a[p]} vs {b[p]}" for p in b if p in a and a[p] != b[p]][:3]
      raise CheckpointError(
          f"the checkpoint {where} does not fit this model in '{item}': "
          f"missing {missing}, unexpected {extra}, shape changes {shapes}. It was written by a "
          "different model or config; use a fresh --workdir (or the config it was trained with)")


def read_workdir_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{workdir} has no {CONFIG_FILE}: it is not a cnnjax workdir (expected the --workdir "
        "of a finished or running `python train.py`)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error})") from error


def _single_device_target(metadata_tree) -> Any:
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), metadata_tree)


def _intact_step(directory: str, which: str, step: int | None) -> int:
  """The step to read for evaluation: the requested one, or the newest intact one."""
  steps = _steps_in(directory)
  if not steps:
    raise CheckpointError(
        f"no {which} checkpoint in {directory}: train first (python train.py --workdir "
        f"{os.path.dirname(directory)}), or pass which='latest'")
  if step is not None or which == "best":
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f"{directory} has no checkpoint of step {step}; it has {steps}")
    problem = checkpoint_problem(os.path.join(directory, str(step)))
    if problem:
      raise CheckpointError(f"the {which} checkpoint {directory}/{step} (step {step}) is "
                            f"damaged: {problem}")
    return step
  damaged = []
  for candidate in reversed(steps):
    problem = checkpoint_problem(os.path.join(directory, str(candidate)))
    if problem is None:
      if damaged:
        log.warning("skipping damaged checkpoint(s) %s of %s; reading step %d",
                    "; ".join(f"step {s}: {p}" for s, p in damaged), directory, candidate)
      return candidate
    damaged.append((candidate, problem))
  raise CheckpointError(f"no intact checkpoint in {directory}: "
                        + "; ".join(f"step {s}: {p}" for s, p in damaged))


def restore_variables(workdir: str, *, which: str = "latest", use_ema: bool = False,
                      step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """({"params", "batch_stats"?}, meta) of a workdir's checkpoint, on one local device.

  Args:
    which: "latest" (the newest intact periodic checkpoint; damaged newer ones
      are skipped with a warning) or "best" (lowest validation top-1 error
      seen during training).
    use_ema: return the Polyak/EMA parameters as "params" (CheckpointError if
      the run kept none).
    step: a specific step of `which` (CheckpointError if it is damaged).
  """
  if which not in ("latest", "best"):
    raise CheckpointError(f"which={which!r}: choose 'latest' or 'best'")
  directory = os.path.join(workdir, LATEST_DIR if which == "latest" else BEST_DIR)
  step = _intact_step(directory, which, step)
  manager = _manager(directory, 1, read_only=True)
  try:
    with _read_errors_named(directory, step):
      meta = dict(manager.restore(step, args=ocp.args.Composite(
          **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM])
      params_item = "ema_params" if use_ema else "params"
      if params_item not in meta["items"]:
        raise CheckpointError(
            f"{directory}/{step} has no EMA parameters (the run had ema_decay=0); "
            "use use_ema=False")
      wanted = [params_item] + (["batch_stats"] if "batch_stats" in meta["items"] else [])
      metadata = manager.item_metadata(step)
      targets = {k: _single_device_target(metadata[k].tree) for k in wanted}
      restored = manager.restore(step, args=ocp.args.Composite(
          **{k: ocp.args.StandardRestore(v) for k, v in targets.items()}))
  finally:
    manager.close()
  variables = {"params": restored[params_item]}
  if "batch_stats" in restored:
    variables["batch_stats"] = restored["batch_stats"]
  return variables, meta


def restore_for_eval(workdir: str, *, which: str = "latest", use_ema: bool = False):
  """(config, model, variables) of a trained workdir, ready for `model.apply`.

  config is the run's resolved ConfigDict (from config.json), model the flax
  module built from it (float32 compute unless the run used another dtype),
  variables {"params", "batch_stats"?} on the default device. Example:

    config, model, variables = restore_for_eval("workdirs/quickstart")
    logits = model.apply(variables, images, train=False)
  """
  import ml_collections  # pylint: disable=g-import-not-at-top

  from cnnjax.train import setup  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(read_workdir_config(workdir))
  model = setup.create_model(config, num_devices=1)
  variables, _ = restore_variables(workdir, which=which, use_ema=use_ema)
  return config, model, variables
