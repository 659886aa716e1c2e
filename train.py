r"""Train a cnnjax recipe: flags -> cnnjax.train.run(config, workdir).

  python train.py                                   # offline quickstart (digits, ResNet-20, CPU)
  python train.py --config cnnjax/configs/resnet_cifar10.py:110 --workdir workdirs/r110
  python train.py --config cnnjax/configs/vgg_imagenet.py:D,jitter --workdir workdirs/vgg_d \
      --config.batch_size=512 --config.lr_scaling=linear

`--config.<key>=<value>` overrides any key of cnnjax/configs/base.py; values
are parsed as Python literals (never evaluated). Free-form dicts take a dict
literal: --config.model_kwargs="{'width_multiplier': 0.5}".

Multi-host (GPU cluster, TPU slice): add --multihost to every process (see
README, "Training"). Compilation cache: --config.compilation_cache_dir or
$CNNJAX_COMPILATION_CACHE_DIR (default ~/.cache/cnnjax/jax; "none" = off).
"""

from __future__ import annotations

import ast
import os
import sys

from cnnjax import xla_cpu

# Process settings, before JAX is imported and starts its backend (cnnjax/xla_cpu.py;
# RESULTS.md, train_step, ResNet-50 on a 2-core CPU): tuned XLA:CPU flags, 1.07x and
# 1.04-1.08x (CNNJAX_XLA_CPU_FLAGS=off keeps XLA's defaults), and glibc malloc keeping
# freed memory, 1.06-1.28x (CNNJAX_CPU_MALLOC=off keeps glibc's defaults). The CPU
# model parts are a config key, cpu_kernels (cnnjax/train/setup.py create_model).
xla_cpu.configure_process()

from absl import app, flags, logging
from ml_collections import config_flags

from cnnjax import logs
from cnnjax.errors import CnnjaxError, ConfigError

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "cnnjax", "configs", "quickstart.py")
_DEFAULT_WORKDIR = os.path.join("workdirs", "quickstart")

_CONFIG = None  # defined under __main__: config_flags reads sys.argv when defined
_WORKDIR = flags.DEFINE_string(
    "workdir", None, f"Checkpoints, metrics and config.json go here (default {_DEFAULT_WORKDIR} "
    "for the quickstart, workdirs/<recipe> otherwise). A workdir with a checkpoint resumes.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Join a multi-process run with jax.distributed.initialize() "
    "(auto-detected on TPU slices, SLURM, Open MPI; else give the three flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    "local_device_ids", None, "Devices of this process: 'auto' (default; $JAX_LOCAL_DEVICE_IDS "
    "if set, else under SLURM / Open MPI all of the node's GPUs, or one per process when the "
    "launcher starts one process per GPU), 'all', or a list such as '0,1'.")


_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the libraries' own log lines (TensorFlow's C++ notices, AutoGraph, "
    "tfds, orbax); by default only their errors print (cnnjax/logs.py).")


def _library_words(error: BaseException) -> str:
  """The message an exception carries, unwrapped from ml_collections' KeyError-in-AttributeError."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return " ".join(str(message).split())


def _override_error(argv: list[str], error: Exception) -> ConfigError:
  """ml_collections' own words for a --config.<key> it could not set, plus what they lack.

  ml_collections says "Did you mean ..." for an unknown key, but only "'depth'"
  for a key inside a free-form dict (model_kwargs, ...), which takes a whole
  dict literal, and a TypeError for a sub-key of a plain value: those two
  explanations are the only words added here.
  """
  from cnnjax.configs import base  # pylint: disable=g-import-not-at-top
  reference = base.get_base_config()
  said = _library_words(error)
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path, _, value = arg[len("--config."):].partition("=")
    key, _, rest = path.partition(".")
    if key not in reference:
      return ConfigError(f"{arg}: unknown config key {said}")
    if rest and key in base.FREE_FORM_KEYS:
      try:  # a number, True, a tuple... stays as typed; a bare word becomes a string
        ast.literal_eval(value)
        literal = value
      except (ValueError, SyntaxError):
        literal = repr(value) if value else "..."
      return ConfigError(
          f"{arg}: config.{key} is a free-form dict; pass it whole as a literal, e.g. "
          f"--config.{key}=\"{{'{rest}': {literal}}}\"")
    if rest and not hasattr(reference[key], "keys"):
      return ConfigError(f"{arg}: config.{key} is a {type(reference[key]).__name__} and has no "
                         "sub-keys")
  return ConfigError(f"a --config.<key> override could not be applied: {said}")


# What ml_collections raises, outside absl's flags.Error, for an override it cannot apply
# (an unknown key, a key inside a value that has none). absl reports everything else.
_OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError)


def _exit_with_override_error(argv: list[str], error: Exception) -> None:
  print(f"ConfigError: {_override_error(argv, error)}", file=sys.stderr)
  sys.exit(2)


def define_config_flag(argv: list[str]):
  """The --config flag; ml_collections reads the --config.<key> overrides in argv right here."""
  try:
    return config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Recipe file, optionally with an argument: path.py[:arg].",
        sys_argv=argv)
  except _OVERRIDE_ERRORS as error:
    _exit_with_override_error(argv, error)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing and error messages; ml_collections' override errors as one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except _OVERRIDE_ERRORS as error:
    _exit_with_override_error(argv, error)


def main(argv: list[str]) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  logs.set_up(verbose=_VERBOSE.value)  # before TensorFlow loads (when the data is opened)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; configure with --config.<key>=<value>")
  if _MULTIHOST.value:
    from cnnjax import sharding  # pylint: disable=g-import-not-at-top
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    local_device_ids=_LOCAL_DEVICE_IDS.value)
  config = _CONFIG.value
  try:
    config.keys()  # config_flags defers a missing or broken file to the first access
  except OSError as e:
    from cnnjax.configs import RECIPES  # pylint: disable=g-import-not-at-top
    reason = " ".join(str(e).split())
    print(f"ConfigError: --config could not be loaded ({reason}); the recipes are "
          f"{', '.join('cnnjax/configs/' + r + '.py' for r in RECIPES)}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value
  if workdir is None:
    recipe = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    workdir = _DEFAULT_WORKDIR if recipe == "quickstart" else os.path.join("workdirs", recipe)
  from cnnjax.train import loop  # pylint: disable=g-import-not-at-top
  try:
    loop.enable_compilation_cache(config.compilation_cache_dir or None)  # before the first jit
    summary = loop.run(config, workdir)
  except CnnjaxError as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
  if summary.get("interrupted"):
    print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)


if __name__ == "__main__":
  _CONFIG = define_config_flag(sys.argv)
  app.run(main, flags_parser=parse_flags)
