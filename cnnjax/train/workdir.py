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
from cnnjax.train import checks
from cnnjax.train import config as config_lib
from cnnjax.train.config import check_init_from_source, init_from_weights
from cnnjax.train.setup import ModelSettings

# Settings of config.model that define what the parameters mean; a workdir's
# checkpoint must agree.
MODEL_KEYS = ("name", "kwargs", "num_classes")


def _model_identity(model: ModelSettings) -> dict[str, Any]:
  return {k: checks.plain(getattr(model, k)) for k in MODEL_KEYS}


def check_workdir_compatible(workdir: str, model: ModelSettings) -> None:
  """CheckpointError when the workdir's checkpoints belong to another model.

  model: this run's config.model, num_classes resolved.
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
  stored = _model_identity(config_lib.load(stored_config).model)
  current = _model_identity(model)
  different = {k: (stored[k], current[k]) for k in MODEL_KEYS if stored[k] != current[k]}
  if different:
    details = "; ".join(f"model.{k}: checkpoint {a!r}, this run {b!r}"
                        for k, (a, b) in different.items())
    raise CheckpointError(
        f"{workdir} holds checkpoints of a different model ({details}). Use a fresh --workdir, "
        "or the config the checkpoints were trained with")


def check_init_from(model: ModelSettings, workdir: str) -> None:
  """The warm-start source (config.model.init_from) is usable, before anything compiles.

  A workdir must hold a checkpoint and be another than --workdir; any model's
  checkpoint will do (layers are copied where path and shapes match). Published
  weights must be of this run's network: the same registered architecture, built
  with the options those weights need (e.g. Keras's ResNets: version "1").
  """
  source = model.init_from
  if not source:
    return
  check_init_from_source(source)
  weights = init_from_weights(source)
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  if weights is not None:
    from cnnjax.weights import catalogue  # pylint: disable=import-outside-toplevel
    spec = catalogue.get_source(weights[0])
    if models.get_spec(model.name) != models.get_spec(spec.model):
      raise ConfigError(
          f"config.model.init_from={source!r} holds a {spec.model}; this run trains "
          f"{model.name!r}. Set config.model.name={spec.model!r}.")
    kwargs = checks.plain(model.kwargs or {})
    wrong = {key: value for key, value in spec.model_kwargs.items() if kwargs.get(key) != value}
    if wrong:
      raise ConfigError(
          f"config.model.init_from={source!r} needs the network built as those weights were: "
          f"config.model.kwargs must include {wrong} (it has {kwargs}).")
    return
  if not ckpt_lib.has_checkpoint(source):
    raise CheckpointError(
        f"config.model.init_from={source!r} holds no checkpoint (expected "
        f"{source}/checkpoints/<step>): "
        "train there first (VGG: net A)")
  stored = config_lib.load(ckpt_lib.read_workdir_config(source)).model.name
  if stored not in models.list_models():
    raise CheckpointError(
        f"config.model.init_from={source!r} was trained with model {stored!r}, which "
        "this version of cnnjax does not know")
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise ConfigError("config.model.init_from must be another workdir than --workdir")


def warm_start(model: ModelSettings, target: Mapping[str, Any]) -> tuple[dict, str]:
  """(target variables with the source's layers copied in, a description for the log).

  The source is config.model.init_from: another run's workdir or published weights
  (`cnnjax.weights`). Layers are copied where the source has the same layer
  path and shapes, batch statistics with their layer; the rest (a classifier
  for another number of classes) keeps its fresh initialisation. A VGG whose
  source is a trained shallower VGG gets the paper's net-A scheme instead
  (`cnnjax.models.warm_start`).
  """
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  from cnnjax.models import warm_start as warm_start_lib  # pylint: disable=import-outside-toplevel
  source_name = model.init_from
  weights = init_from_weights(source_name)
  paper_chain = False
  if weights is not None:
    from cnnjax import weights as weights_lib  # pylint: disable=import-outside-toplevel
    source = weights_lib.load(weights[0], path=weights[1]).variables
  else:
    source, _ = ckpt_lib.restore_variables(source_name)
    stored_model = config_lib.load(ckpt_lib.read_workdir_config(source_name)).model.name
    target_spec = models.get_spec(model.name)
    paper_chain = (target_spec.warm_start is not None
                   and models.get_spec(stored_model).family == target_spec.family
                   and not warm_start_lib.same_architecture(source["params"], target["params"])
                   and _conv_layers(source["params"]) < _conv_layers(target["params"]))
  source = {key: value for key, value in source.items() if key in target}
  variables, report = warm_start_lib.warm_start(target, source, paper_vgg_chain=paper_chain)
  message = (f"warm start from {source_name}: copied {len(report['copied'])} layers "
             f"({', '.join(report['copied'])}); new (freshly initialised): "
             f"{', '.join(report['new']) or 'none'}")
  if report["unused"]:
    message += f"; not used from the source: {', '.join(report['unused'])}"
  logging.getLogger(__name__).info("%s", message)
  return variables, message


def _conv_layers(params: Mapping[str, Any]) -> int:
  from cnnjax.models.warm_start import _layers  # pylint: disable=import-outside-toplevel
  return len(_layers(params)[0])


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
