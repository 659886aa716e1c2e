"""Checkpoints of a workdir: one orbax CheckpointManager, async, latest N plus the best.

Layout of a workdir (a local path or any `etils.epath` path, e.g. gs://bucket/run):

  config.json              the run's settings by subtree, image size and classes resolved
  checkpoints/<step>/      the latest `checkpoint.keep` states, plus the one with the
                           lowest validation top-1 error so far (orbax preservation
                           policies LatestN + BestN in one manager)
    params/                orbax pytree: float32 parameters
    batch_stats/           BatchNorm running statistics (absent without BN)
    ema_params/            Polyak/EMA parameters (absent when ema_decay = 0)
    opt_state/             optax state: momentum, injected learning rate, ...
    progress/              step, rng, lr_control (plateau / warm-up state)
    meta/                  JSON: step, data position, best error, model, structure
    metrics/               orbax's metrics of a step saved as a new best ({"top1_error"})
    cnnjax_manifest.json   size and SHA-256 of every file above
  corrupt_checkpoints/     damaged checkpoints moved aside on resume (see below)

The data position of a checkpoint is its step: `cnnjax.data.train_iterator
(start_step=step)` yields the batches an uninterrupted run would have seen
next. Restoring takes an abstract target carrying the current mesh's
shardings, so a run saved on 8 devices resumes on 1 or 64.

Saves are asynchronous: `save` returns once the arrays are copied off the
devices (so the train step may donate them right away) and writing continues
in the background; `wait()` blocks until it is on disk. No pickle: arrays go
to tensorstore, metadata to JSON. A step is saved once: the save that marks it
as the best must be its first (see `CheckpointStore.save`).

Integrity: just before orbax commits a save (its atomic rename on a local or
shared filesystem, its commit file on an object store: orbax chooses), the
step directory gets `cnnjax_manifest.json` with the size and SHA-256 of every
item file, and the step's meta records that it has one (`checkpoint_integrity`).
Opening a `CheckpointStore` verifies the steps before orbax lists them (its
manager parses every step's metrics while it is built): the newest ones
thoroughly down to the first intact one, the older ones by size and small
files; damaged ones go to <workdir>/corrupt_checkpoints/ and the run resumes
from the newest intact one. In a multi-process run process 0 decides and
every process takes its decision before building the manager. Evaluation
reads through managers that list only the steps they read, and refuses
damaged ones.

`restore_for_eval(workdir)` is the entry point for evaluation code: it needs
no optimiser, no dataset and no TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cnnjax import logs
from cnnjax.errors import CheckpointError, CnnjaxError
from cnnjax.train import checkpoint_integrity as integrity

STATE_ITEMS = ("params", "batch_stats", "ema_params", "opt_state", "progress")
META_ITEM = "meta"
LATEST_DIR = "checkpoints"
# Where workdirs written before the single manager kept their best checkpoint (read only).
LEGACY_BEST_DIR = "best"
QUARANTINE_DIR = "corrupt_checkpoints"
CONFIG_FILE = "config.json"
# The orbax metric that ranks checkpoints for "best" (lower is better).
BEST_METRIC = "top1_error"
# Items every checkpoint has (checked even when a checkpoint has no manifest).
REQUIRED_ITEMS = ("params", META_ITEM)

log = logging.getLogger(__name__)


def checkpoint_problem(step_dir: epath.PathLike, *, thorough: bool = True) -> str | None:
  """What is wrong with a committed checkpoint directory; None when intact.

  A checkpoint written before manifests existed cannot be verified: it is
  accepted with a warning naming it. thorough=False: sizes and small files
  only (see checkpoint_integrity.verify), for steps that will not be read.
  """
  verdict = integrity.verify(step_dir, required_items=REQUIRED_ITEMS, thorough=thorough)
  if verdict.unverified:
    log.warning("checkpoint %s has no manifest (written before cnnjax recorded one): its files "
                "cannot be verified before they are read", step_dir)
  return verdict.problem


def path_name(path) -> str:
  """"params/conv1/kernel" for a key path: the names checkpoint structures are keyed by."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def structure(tree) -> dict[str, list[int]]:
  """{path: shape} of every array leaf: what must match for a restore to make sense."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_name(path): list(np.shape(leaf)) for path, leaf in flat}


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


def _best_metric(metrics: Mapping[str, Any]) -> float:
  return float(metrics[BEST_METRIC])


def _preservation_policy(keep: int):
  """Keep the newest `keep` checkpoints and the one with the lowest BEST_METRIC."""
  policies = ocp.checkpoint_managers
  return policies.AnyPreservationPolicy([
      policies.LatestN(n=keep),
      # reverse: sorted from worst to best, orbax keeps the last n (the lowest errors).
      policies.BestN(get_metric_fn=_best_metric, reverse=True, n=1,
                     keep_checkpoints_without_metrics=False),
  ])


class _OnlySteps:
  """orbax's standard step naming, listing only `steps`.

  A read-only manager built with it never opens the other steps (orbax parses
  the metrics of every step it lists), so a damaged one that is not read
  cannot stop the reading of a sound one.
  """

  def __init__(self, steps):
    self._format = ocp.step.standard_name_format()
    self._steps = frozenset(int(s) for s in steps)

  def find_all(self, base_path):
    return [m for m in self._format.find_all(base_path) if m.step in self._steps]

  def __getattr__(self, name):
    return getattr(self._format, name)


def _manager(directory: epath.PathLike, keep: int, *, read_only: bool = False,
             async_save: bool = True, only_steps=None) -> ocp.CheckpointManager:
  directory = epath.Path(directory)
  if not directory.is_absolute():
    directory = epath.Path(os.path.abspath(os.fspath(directory)))
  extra = {}
  if only_steps is not None:
    extra["step_name_format"] = _OnlySteps(only_steps)
  if not read_only:
    extra["temporary_path_class"] = integrity.manifested_temporary_path_class(directory)
    extra["preservation_policy"] = _preservation_policy(keep)
  options = ocp.CheckpointManagerOptions(
      # best_fn makes orbax write and read the metrics of a step; best_step() ranks by it.
      best_fn=_best_metric, best_mode="min",
      create=not read_only, read_only=read_only,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,  # leftovers of a save killed mid-way
      **extra)
  return ocp.CheckpointManager(directory, options=options, item_handlers=_item_handlers())


def _steps_in(directory: epath.PathLike) -> list[int]:
  """Committed checkpoint steps under a manager directory, without creating anything.

  orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` when a save is
  complete, so only all-digit names count.
  """
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(entry.name) for entry in directory.iterdir()
                if entry.name.isdigit() and entry.is_dir())


def has_checkpoint(workdir: epath.PathLike) -> bool:
  return bool(_steps_in(epath.Path(workdir) / LATEST_DIR))


class _MissingMetricsFilter(logging.Filter):
  """orbax warns at every save without metrics once a best metric is tracked: by design here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "tracked_metric" not in str(record.msg)


@contextlib.contextmanager
def _quiet_about_missing_metrics():
  absl_logger = logging.getLogger("absl")
  quiet = _MissingMetricsFilter()
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


def _agree_with_first_process(value: int) -> int:
  """Process 0's `value`, in every process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


# What process 0 announces instead of a step when resuming is impossible or starts fresh.
_NO_CHECKPOINT = -1
_NOTHING_INTACT = -2


class CheckpointStore:
  """A workdir's checkpoint manager: the latest `keep` steps plus the best one."""

  def __init__(self, workdir: epath.PathLike, keep: int = 3, *, async_save: bool = True):
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / LATEST_DIR
    # Before orbax lists any step (its manager reads every step's metrics while it is
    # built), in every process: damaged steps are moved aside first.
    self._resume_step = self._verify_steps()
    self.manager = _manager(self.directory, keep, async_save=async_save)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The saved step with the lowest validation top-1 error (None before any best save)."""
    return self.manager.best_step()

  def newest_restorable_step(self) -> int | None:
    """The newest intact checkpoint, as found when the store was opened (None: none at all)."""
    return self._resume_step

  def _verify_steps(self) -> int | None:
    """Verifies the saved steps before orbax reads any of them; returns the newest intact one.

    The newest steps are verified thoroughly (every file re-hashed) down to the
    first intact one, which a resume reads; older ones quickly (sizes, and the
    small files orbax parses when it lists them). Damaged ones (missing,
    truncated, emptied or altered files, see checkpoint_integrity) are moved
    to <workdir>/corrupt_checkpoints with a warning naming both steps. When
    every checkpoint is damaged nothing is moved and CheckpointError says
    what is wrong: starting over is the user's decision.

    Every process calls this (from the constructor). Process 0 alone
    verifies, moves and decides; the others take its answer, so a process
    that lists the directory after the move cannot disagree about the step
    (or hang).
    """
    directory = self.directory
    details = ""
    if jax.process_index() == 0:
      damaged = []
      decision = _NO_CHECKPOINT
      for step in sorted(_steps_in(directory), reverse=True):
        problem = checkpoint_problem(directory / str(step),
                                     thorough=decision == _NO_CHECKPOINT)
        if problem is None:
          if decision == _NO_CHECKPOINT:
            decision = step
        else:
          damaged.append((step, problem))
      if decision == _NO_CHECKPOINT and damaged:
        decision = _NOTHING_INTACT
        details = "; ".join(f"step {step}: {problem}" for step, problem in damaged)
      elif damaged:
        quarantine = self.workdir / QUARANTINE_DIR
        for bad_step, problem in damaged:
          moved = integrity.quarantine(directory / str(bad_step), quarantine)
          log.warning("checkpoint step %d in %s is damaged (%s); moved it to %s and resume from "
                      "step %d", bad_step, directory, problem, moved, decision)
    else:
      decision = _NO_CHECKPOINT  # replaced by process 0's
    decision = _agree_with_first_process(decision)
    if decision == _NOTHING_INTACT:
      where = f" ({details})" if details else " (process 0 logged what is damaged)"
      raise CheckpointError(
          f"no intact checkpoint in {directory}{where}. Restore the files, or move "
          f"{directory} away to start from scratch")
    return None if decision == _NO_CHECKPOINT else decision

  def save(self, arrays: Mapping[str, Any], meta: Mapping[str, Any], *, best: bool = False) -> None:
    """Saves a state (arrays as from TrainState.arrays()) at meta['step'].

    best=True: the state is a new best; meta['best_eval_error'] is its
    validation top-1 error and becomes the step's orbax metric, so the
    preservation policy keeps it after it falls out of the latest N.

    A step is written once. A second save of a saved step is a no-op, except
    best=True for a step first saved without it: that checkpoint is written
    again with its metric (correct, but it costs a second write; evaluate
    before saving a step that is both evaluated and checkpointed).

    The caller guarantees the state is finite; the train step never produces
    a non-finite state (it keeps the previous one).
    """
    step = int(meta["step"])
    metrics = {BEST_METRIC: float(meta["best_eval_error"])} if best else None
    if step in self.manager.all_steps():
      if not best:
        return
      self.manager.wait_until_finished()
      if self.manager.metrics(step) is not None:
        return
      log.warning("step %d was saved before it was known to be the best; saving it again with "
                  "its validation error", step)
      self.manager.delete(step)
    items = state_items(arrays)
    meta = dict(meta, items=sorted(items), structure={k: structure(v) for k, v in items.items()},
                **integrity.declaration())
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()},
                              **{META_ITEM: ocp.args.JsonSave(meta)})
    with _quiet_about_missing_metrics():
      self.manager.save(step, args=args, metrics=metrics, force=True)

  def _step(self, step: int | None, best: bool) -> int:
    if step is None:
      step = self.best_step() if best else self.manager.latest_step()
    if step is None:
      which = "best " if best else ""
      raise CheckpointError(f"no {which}checkpoint in {self.directory}")
    return step

  def read_meta(self, step: int | None = None, *, best: bool = False) -> dict[str, Any]:
    step = self._step(step, best)
    with _read_errors_named(self.directory, step):
      return dict(self.manager.restore(step, args=ocp.args.Composite(
          **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM])

  def restore(self, abstract_arrays: Mapping[str, Any], step: int | None = None, *,
              best: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arrays, meta) of a checkpoint, placed on the shardings of `abstract_arrays`."""
    step = self._step(step, best)
    meta = self.read_meta(step)
    target = state_items(abstract_arrays)
    check_structure(meta, target, where=f"{self.directory}/{step}")
    with _read_errors_named(self.directory, step):
      restored = self.manager.restore(step, args=ocp.args.Composite(
          **{k: ocp.args.StandardRestore(v) for k, v in target.items()}))
    return arrays_from_items(restored, abstract_arrays), meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


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


def read_workdir_config(workdir: epath.PathLike) -> dict[str, Any]:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(
        f"{workdir} has no {CONFIG_FILE}: it is not a cnnjax workdir (expected the --workdir "
        "of a finished or running `python train.py`)")
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise CheckpointError(f"{path} is unreadable ({type(error).__name__}: {error})") from error


def read_settings(workdir: epath.PathLike):
  """The `Settings` of a workdir's config.json (either layout: see cnnjax.train.config)."""
  from cnnjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.load(read_workdir_config(workdir))


def _single_device_target(metadata_tree) -> Any:
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), metadata_tree)


def _checked(directory: epath.Path, which: str, step: int, steps: list[int]) -> int:
  if step not in steps:
    raise CheckpointError(f"{directory} has no checkpoint of step {step}; it has {steps}")
  problem = checkpoint_problem(directory / str(step))
  if problem:
    raise CheckpointError(f"the {which} checkpoint {directory}/{step} (step {step}) is "
                          f"damaged: {problem}")
  return step


def _newest_intact(directory: epath.Path, steps: list[int]) -> int:
  damaged = []
  for candidate in reversed(steps):
    problem = checkpoint_problem(directory / str(candidate))
    if problem is None:
      if damaged:
        log.warning("skipping damaged checkpoint(s) %s of %s; reading step %d",
                    "; ".join(f"step {s}: {p}" for s, p in damaged), directory, candidate)
      return candidate
    damaged.append((candidate, problem))
  raise CheckpointError(f"no intact checkpoint in {directory}: "
                        + "; ".join(f"step {s}: {p}" for s, p in damaged))


def _eval_source(workdir: epath.Path, which: str, step: int | None) -> tuple[epath.Path, int]:
  """(manager directory, step) to read for evaluation; CheckpointError naming what is missing."""
  directory = workdir / LATEST_DIR
  steps = _steps_in(directory)
  if which == "best" and step is None:
    legacy = workdir / LEGACY_BEST_DIR
    listable = [s for s in steps if integrity.listing_problem(directory / str(s)) is None]
    if len(listable) < len(steps):
      log.warning("checkpoint step(s) %s in %s have unreadable metrics or step metadata; the best "
                  "checkpoint is chosen among the others", sorted(set(steps) - set(listable)),
                  directory)
    manager = _manager(directory, 1, read_only=True, only_steps=listable) if listable else None
    try:
      best = manager.best_step() if manager is not None else None
    finally:
      if manager is not None:
        manager.close()
    if best is None and _steps_in(legacy):  # a workdir written before the single manager
      directory, steps, best = legacy, _steps_in(legacy), _steps_in(legacy)[-1]
    if best is None:
      raise CheckpointError(
          f"no best checkpoint in {directory}: no validation has run yet (train longer, or "
          "with eval.every_steps or eval.every_epochs set), or pass which='latest'")
    return directory, _checked(directory, which, best, steps)
  if not steps:
    raise CheckpointError(
        f"no {which} checkpoint in {directory}: train first (python train.py --workdir "
        f"{workdir}), or pass which='latest'")
  if step is not None:
    return directory, _checked(directory, which, step, steps)
  return directory, _newest_intact(directory, steps)


@logs.quiet_libraries()
def restore_variables(workdir: epath.PathLike, *, which: str = "latest", use_ema: bool = False,
                      step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """({"params", "batch_stats"?}, meta) of a workdir's checkpoint, on one local device.

  Args:
    which: "latest" (the newest intact checkpoint; damaged newer ones are
      skipped with a warning) or "best" (lowest validation top-1 error seen
      during training).
    use_ema: return the Polyak/EMA parameters as "params" (CheckpointError if
      the run kept none).
    step: a specific step (CheckpointError if it is damaged).
  """
  if which not in ("latest", "best"):
    raise CheckpointError(f"which={which!r}: choose 'latest' or 'best'")
  directory, step = _eval_source(epath.Path(workdir), which, step)
  manager = _manager(directory, 1, read_only=True, only_steps=[step])
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


@logs.quiet_libraries()
def restore_for_eval(workdir: epath.PathLike, *, which: str = "latest", use_ema: bool = False):
  """(config, model, variables) of a trained workdir, ready for `model.apply`.

  config is the run's `Settings` (from config.json, of either layout; image size and
  classes resolved), model the flax
  module built from it (float32 compute unless the run used another dtype),
  variables {"params", "batch_stats"?} on the default device. Example:

    config, model, variables = restore_for_eval("workdirs/quickstart")
    logits = model.apply(variables, images, train=False)
  """
  from cnnjax.train import setup  # pylint: disable=g-import-not-at-top
  config = read_settings(workdir)
  model = setup.create_model(config.model, batch_size=config.run.batch_size, num_devices=1)
  variables, _ = restore_variables(workdir, which=which, use_ema=use_ema)
  return config, model, variables
