r"""Train a cnnjax recipe: `cnnjax-train` or `python -m cnnjax.train` (flags -> `run`).

  cnnjax-train                                       # offline quickstart (digits, ResNet-20, CPU)
  cnnjax-train --config resnet_cifar10:110 --workdir workdirs/r110
  cnnjax-train --config vgg_imagenet:D,jitter --workdir workdirs/vgg_d \
      --config.run.batch_size=512 --config.optimizer.lr_scaling=linear
  cnnjax-train --config my_recipe.py:arg             # a recipe file of your own, by path

`--config` takes a recipe by name (quickstart, alexnet_imagenet, vgg_imagenet,
googlenet_imagenet, resnet_imagenet, resnet_cifar10), from any directory, or
a file by path, each optionally with `:arg`. `--config.<group>.<key>=<value>`
overrides any setting (groups: model, input, optimizer, schedule, loss, eval,
checkpoint, run; cnnjax/train/config.py lists them); values are Python
literals (never evaluated); free-form dicts take a whole dict literal:
--config.model.kwargs="{'width_multiplier': 0.5}". Multi-host: add
--multihost to every process (docs/training.md).
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
import time
from collections.abc import Sequence

_DEFAULT_RECIPE = "quickstart"
WORKDIRS = "workdirs"  # the default workdir is workdirs/<recipe>, under the current directory


def define_flags(flag_values, argv: Sequence[str]) -> None:
  """The command's flags; ml_collections reads the --config.<key> overrides from `argv` here."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from cnnjax import _cli  # pylint: disable=g-import-not-at-top
  from cnnjax.configs import recipe_path  # pylint: disable=g-import-not-at-top
  try:
    config_flags.DEFINE_config_file(
        "config", recipe_path(_DEFAULT_RECIPE),
        "a recipe by name or a file by path, optionally with an argument: name[:arg] or "
        "path.py[:arg]", flag_values=flag_values, sys_argv=list(argv))
  except _OVERRIDE_ERRORS as error:
    _exit_with_override_error(argv, error)
  flags.DEFINE_string(
      "workdir", None, "checkpoints, metrics and config.json go here (default "
      f"{WORKDIRS}/<recipe>); a workdir with a checkpoint resumes", flag_values=flag_values)
  flags.DEFINE_bool(
      "multihost", False, "join a multi-process run with jax.distributed.initialize() "
      "(auto-detected on TPU slices, SLURM, Open MPI; else give the three flags below)",
      flag_values=flag_values)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0",
                      flag_values=flag_values)
  flags.DEFINE_integer("num_processes", None, "processes in the run", flag_values=flag_values)
  flags.DEFINE_integer("process_id", None, "this process's index, 0..num_processes-1",
                       flag_values=flag_values)
  flags.DEFINE_string(
      "local_device_ids", None, "devices of this process: 'auto' (default; "
      "$JAX_LOCAL_DEVICE_IDS if set, else under SLURM / Open MPI all of the node's GPUs, or one "
      "per process when the launcher starts one process per GPU), 'all', or a list such as '0,1'",
      flag_values=flag_values)
  _cli.define_verbose(flag_values)


def resolve_config_argument(value: str) -> str:
  """`name[:arg]` of a recipe -> `its path[:arg]`; a path (with / or .py) is kept as given."""
  from cnnjax.configs import RECIPES, recipe_path  # pylint: disable=g-import-not-at-top
  from cnnjax.errors import ConfigError, close_matches  # pylint: disable=g-import-not-at-top
  name, colon, arg = value.partition(":")
  if name.endswith(".py") or "/" in name or os.sep in name:
    return value
  if name not in RECIPES:
    raise ConfigError(f"--config={value}: no recipe named {name!r} "
                      f"({close_matches(name, RECIPES)}); a file of your own needs its path, "
                      "e.g. ./my_recipe.py")
  return recipe_path(name) + colon + arg


def resolve_recipe_names(argv: Sequence[str]) -> list[str]:
  """`argv` with each --config value given by name replaced by the recipe's path."""
  resolved = list(argv)
  for i, arg in enumerate(resolved):
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        resolved[i] = prefix + resolve_config_argument(arg[len(prefix):])
    if arg in ("--config", "-config") and i + 1 < len(resolved):
      resolved[i + 1] = resolve_config_argument(resolved[i + 1])
  return resolved


def _library_words(error: BaseException) -> str:
  """The message an exception carries, unwrapped from ml_collections' KeyError-in-AttributeError."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(str(message).split())


def _override_error(argv: Sequence[str], error: Exception):
  """ml_collections' own words for a --config.<path> it could not set, plus what they lack.

  ml_collections says "Did you mean ..." for an unknown key at any level, but
  only "'depth'" for a key inside a free-form dict (model.kwargs, ...), which
  takes a whole dict literal, a TypeError for a sub-key of a plain value, and
  nothing about a name of the flat layout (--config.learning_rate, now
  --config.optimizer.learning_rate): those explanations are added here.
  """
  from cnnjax.configs import base  # pylint: disable=g-import-not-at-top
  from cnnjax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  reference = base.get_base_config().to_dict()
  said = _library_words(error)
  for arg in argv[1:]:
    if arg.startswith("--config."):
      path, _, value = arg[len("--config."):].partition("=")
      found = _path_error(arg, path.split("."), value, reference, said, base.free_form_keys())
      if found is not None:
        return ConfigError(found)
  return ConfigError(f"a --config.<key> override could not be applied: {said}")


def _path_error(arg: str, parts: list[str], value: str, reference: dict, said: str,
                free_form: Sequence[str]) -> str | None:
  """What is wrong with the path of one --config.<path>=<value> flag; None if nothing."""
  from cnnjax.train.config import (  # pylint: disable=g-import-not-at-top
      FLAT_TO_NESTED, REMOVED_KEYS)
  node, walked = reference, []
  for i, part in enumerate(parts):
    where = ".".join(walked)
    if where in free_form:
      rest = ".".join(parts[i:])
      try:  # a number, True, a tuple... stays as typed; a bare word becomes a string
        ast.literal_eval(value)
        literal = value
      except (ValueError, SyntaxError):
        literal = repr(value) if value else "..."
      return (f"{arg}: config.{where} is a free-form dict; pass it whole as a literal, e.g. "
              f"--config.{where}=\"{{'{rest}': {literal}}}\"")
    if not isinstance(node, dict):
      return f"{arg}: config.{where} is a {type(node).__name__} and has no sub-keys"
    if part not in node:
      if not walked and part in REMOVED_KEYS:
        return f"{arg}: config.{part} was removed; use config.{REMOVED_KEYS[part]}"
      if not walked and part in FLAT_TO_NESTED:
        return (f"{arg}: config.{part} is now config.{FLAT_TO_NESTED[part][0]} (the settings "
                "are grouped by subsystem)")
      if not walked:  # perhaps a misspelt name of the flat layout: its new place
        close = difflib.get_close_matches(part, FLAT_TO_NESTED, n=3, cutoff=0.75)
        if close:
          return (f"{arg}: unknown config key {part!r}; did you mean "
                  + " or ".join(f"config.{FLAT_TO_NESTED[c][0]}" for c in close) + "?")
      return f"{arg}: unknown config key {said}"
    node = node[part]
    walked.append(part)
  return None


# What ml_collections raises, outside absl's flags.Error, for an override it cannot apply
# (an unknown key, a key inside a value that has none). absl reports everything else.
_OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError)


def _exit_with_override_error(argv: Sequence[str], error: Exception) -> None:
  from cnnjax import _cli  # pylint: disable=g-import-not-at-top
  _cli.print_user_error(_override_error(argv, error))
  sys.exit(_cli.USAGE_ERROR)


def _load_config(flag_values):
  """The recipe's ConfigDict; a missing or unreadable file is a ConfigError listing the recipes."""
  from cnnjax.configs import RECIPES  # pylint: disable=g-import-not-at-top
  from cnnjax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = flag_values.config
  try:
    config.keys()  # config_flags defers a missing or broken file to the first access
  except OSError as e:
    reason = " ".join(str(e).split())
    raise ConfigError(f"--config could not be loaded ({reason}); the recipes are "
                      f"{', '.join(RECIPES)} (by name), or give a recipe file's path") from e
  return config


def closing_summary(summary: dict, workdir: str, seconds: float) -> str:
  """The run's last lines: workdir, checkpoints, wall time, the TensorBoard command.

  They follow the loop's own last line, the final held-out error.
  """
  lines = [f"workdir: {workdir}"]
  steps = summary.get("checkpoints", {})
  if steps.get("latest") is not None:
    best = steps["best"]
    lines.append(f"checkpoints: last step {steps['latest']}"
                 + (f", best step {best}" if best is not None else "")
                 + f" in {os.path.join(workdir, 'checkpoints')}")
  lines.append(f"wall time: {seconds:.0f} s")
  lines.append(f"TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  """The command: returns the exit status (0, 1 for a CnnjaxError, 2 for a usage error)."""
  started = time.monotonic()
  argv = list(sys.argv if argv is None else argv)
  # Process settings, before JAX is imported and starts its backend (cnnjax/xla_cpu.py;
  # docs/performance.md): tuned XLA:CPU flags (CNNJAX_XLA_CPU_FLAGS=off keeps XLA's) and
  # glibc malloc keeping freed memory (CNNJAX_CPU_MALLOC=off keeps glibc's defaults).
  from cnnjax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.configure_process()
  from cnnjax import _cli, logs  # pylint: disable=g-import-not-at-top
  from cnnjax.errors import CnnjaxError  # pylint: disable=g-import-not-at-top
  if not _cli.asks_verbose(argv):  # a recipe's defaults import JAX, whose C++ logs read the
    logs.set_up()  # quiet environment as it loads: set before the flags (and recipe) are read
  try:
    argv = resolve_recipe_names(argv)
  except CnnjaxError as error:
    _cli.print_user_error(error)
    return _cli.USAGE_ERROR
  flag_values, positional = _cli.parse(
      argv, lambda fv: define_flags(fv, argv), prog="cnnjax-train", doc=__doc__)
  logs.set_up(verbose=flag_values.verbose)  # before TensorFlow loads (when the data is opened)
  if positional:
    _cli.print_user_error(ValueError(
        f"unexpected arguments {positional}; configure with --config.<key>=<value>"))
    return _cli.USAGE_ERROR
  if flag_values.multihost:
    from cnnjax import sharding  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed(
        flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id,
        local_device_ids=flag_values.local_device_ids)
  try:
    config = _load_config(flag_values)
    workdir = flag_values.workdir
    if workdir is None:
      from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
      recipe = os.path.splitext(os.path.basename(
          config_flags.get_config_filename(flag_values["config"])))[0]
      workdir = os.path.join(WORKDIRS, recipe)
    from cnnjax.train import loop  # pylint: disable=g-import-not-at-top
    loop.enable_compilation_cache(config.run.compilation_cache_dir or None)  # before the first jit
    summary = loop.run(config, workdir)
  except (CnnjaxError, ImportError) as error:
    if isinstance(error, ImportError) and "cnnjax[" not in str(error):
      raise  # a bug, not a missing extra
    _cli.print_user_error(error)
    return 1
  if summary.get("interrupted"):
    print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)
  elif jax_process_index() == 0:
    print(closing_summary(summary, workdir, time.monotonic() - started))
  return 0


def jax_process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


if __name__ == "__main__":
  sys.exit(main())
