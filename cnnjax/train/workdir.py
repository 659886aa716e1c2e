"""What a workdir must agree with before a run computes anything.

A workdir holds one model's checkpoints (config.json says which); a warm
start reads another workdir. Both are checked here, before any compilation,
so a wrong --workdir or init_from fails in seconds with the fix named. A run
that fails before it wrote anything of value leaves the workdir as it found
it (`remove_unused`, `remove_if_created_and_empty`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

from cnnjax._atomic import write_atomic
from cnnjax.errors import CheckpointError, ConfigError, WorkdirLockedError
from cnnjax.train import checkpoint as ckpt_lib
from cnnjax.train import config as config_lib

# Keys that define what the parameters mean; a workdir's checkpoint must agree.
MODEL_KEYS = ("model", "model_kwargs", "num_classes")


def _model_identity(config: Mapping[str, Any]) -> dict[str, Any]:
  plain = config_lib.as_plain_dict(config)
  return {k: plain.get(k) for k in MODEL_KEYS}


def check_workdir_compatible(workdir: str, config: Mapping[str, Any]) -> None:
  """CheckpointError when the workdir's checkpoints belong to another model.

  A config.json that exists but cannot be read (torn by a crash of the
  machine) only loses this early, friendly check: restoring compares the
  checkpoint's own shapes with the model, and the file is rewritten whole.
  """
  if not ckpt_lib.has_checkpoint(workdir):
    return
  try:
    stored_config = ckpt_lib.read_workdir_config(workdir)
  except CheckpointError as error:
    if not os.path.exists(os.path.join(workdir, ckpt_lib.CONFIG_FILE)):
      raise
    logging.getLogger(__name__).warning(
        "%s; relying on the checkpoint's own shapes to match this model", error)
    return
  stored = _model_identity(stored_config)
  current = _model_identity(config)
  different = {k: (stored[k], current[k]) for k in MODEL_KEYS if stored[k] != current[k]}
  if different:
    details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in different.items())
    raise CheckpointError(
        f"{workdir} holds checkpoints of a different model ({details}). Use a fresh --workdir, "
        "or the config the checkpoints were trained with")


def check_init_from(config: Mapping[str, Any], workdir: str) -> None:
  """The warm-start source (config.init_from) exists, holds a checkpoint of the same
  family (whose `ModelSpec.warm_start` copies its layers), and is another workdir."""
  source = config["init_from"]
  if not source:
    return
  if not os.path.isdir(source):
    raise ConfigError(
        f"config.init_from={source!r} does not exist: pass the --workdir of a trained VGG-A run")
  if not ckpt_lib.has_checkpoint(source):
    raise CheckpointError(
        f"config.init_from={source!r} holds no checkpoint (expected {source}/checkpoints/<step>): "
        "train net A there first")
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  stored = ckpt_lib.read_workdir_config(source)
  family = models.get_spec(config["model"]).family
  stored_name = str(stored.get("model", ""))
  if stored_name not in models.list_models() or models.get_spec(stored_name).family != family:
    raise CheckpointError(
        f"config.init_from={source!r} was trained with model {stored.get('model')!r}; the warm "
        f"start of {config['model']} copies layers of a trained {family} (VGG: net A)")
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise ConfigError("config.init_from must be another workdir than --workdir")


def write_whole(path: str, text: str) -> None:
  """Replaces `path` in one rename: a run killed mid-write leaves the old file, not half."""
  write_atomic(path, text)


def entries(workdir: str) -> frozenset[str] | None:
  """The names in `workdir` (None when it does not exist): what a run found there."""
  try:
    return frozenset(os.listdir(workdir))
  except FileNotFoundError:
    return None


def _worth_keeping(path: str, name: str) -> bool:
  """Whether an entry a run created holds anything of value (a checkpoint, a row, ...)."""
  from cnnjax.train import workdir_lock, writer  # pylint: disable=import-outside-toplevel
  if name in (workdir_lock.LOCK_FILE, ckpt_lib.CONFIG_FILE):
    return False  # written by every start; rewritten by the next one
  if name == ckpt_lib.LATEST_DIR:
    return any(n.isdigit() or ".orbax-checkpoint-tmp" in n for n in os.listdir(path))
  if name in (writer.METRICS_FILE, writer.TENSORBOARD_DIR):
    return any(files for _, _, files in os.walk(path)) if os.path.isdir(path) else bool(
        os.path.getsize(path))
  return True


def remove_unused(workdir: str, found: frozenset[str] | None, error: BaseException) -> bool:
  """After a run failed with `error`: removes what it created in `workdir` if none of it is
  worth keeping.

  `found`: `entries(workdir)` before the run. Call it while still holding the
  workdir's lock, from process 0. Nothing is removed when the lock itself
  failed (a lease taken over: the workdir is another run's now), nor the lock
  records, which the lock removes itself. Returns whether anything was
  removed; the workdir itself goes in `remove_if_created_and_empty`, after
  the lock.
  """
  from cnnjax.train import workdir_lock  # pylint: disable=import-outside-toplevel
  if isinstance(error, WorkdirLockedError):
    return False
  created = sorted(name for name in (entries(workdir) or frozenset()) - (found or frozenset())
                   if not name.startswith(workdir_lock.OWNER_FILE))
  paths = [(name, os.path.join(workdir, name)) for name in created]
  if any(_worth_keeping(path, name) for name, path in paths):
    return False
  for _, path in paths:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
  return bool(paths)


def remove_if_created_and_empty(workdir: str, found: frozenset[str] | None) -> None:
  """Removes `workdir` when the run created it (`found` is None) and it is empty again."""
  if found is None:
    with contextlib.suppress(OSError):  # not empty: something of value is there
      os.rmdir(workdir)
