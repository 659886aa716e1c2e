"""Helpers of the reliability tests: tiny configs, train.py subprocesses, workdir inspection."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN_PY = os.path.join(REPO, "train.py")
PHASE_HOOKS = os.path.join(HERE, "phase_hooks")

# CIFAR ResNet-8 at a quarter of the width on the 32x32 digits: compiles in a
# few seconds, runs a step in milliseconds.
TINY = {
    "model.name": "cifar_resnet20",
    "model.kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
    "input.dataset": "digits",
    "input.image_size": 32,
    "run.batch_size": 16,
    "eval.batch_size": 64,
    "eval.num_batches": 2,
    "run.num_steps": 6,
    "schedule.name": "constant",
    "schedule.warmup_steps": -1,
    "optimizer.learning_rate": 0.05,
    "run.log_every_steps": 1,
    "eval.every_steps": -1,
    "checkpoint.every_steps": -1,
    "checkpoint.keep": 2,
    "run.progress_bar": False,
}

# The run the kill tests interrupt (and that the determinism and checkpoint
# tests reuse): every phase comes round often.
KILL_RUN = {"run.num_steps": 40, "checkpoint.every_steps": 3, "eval.every_steps": 4}


def overrides(data_dir: str, cache_dir: str, **extra: Any) -> dict[str, Any]:
  """TINY with the data and cache directories and `extra`, by setting path."""
  from cnnjax.train.config import FLAT_TO_NESTED
  values = dict(TINY, **{"input.data_dir": data_dir, "run.compilation_cache_dir": cache_dir})
  for key, value in extra.items():  # a flat name goes to its place (FLAT_TO_NESTED)
    for path in FLAT_TO_NESTED.get(key, (key,)):
      values[path] = value
  return values


def make_config(data_dir: str, cache_dir: str, **extra: Any):
  """The quickstart recipe with TINY (and `extra`) applied: a locked ConfigDict."""
  from cnnjax.configs import quickstart
  config = quickstart.get_config()
  for path, value in overrides(data_dir, cache_dir, **extra).items():
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def plain_config(data_dir: str, cache_dir: str, **extra: Any) -> dict[str, Any]:
  """make_config as nested plain dicts (what a property test mutates freely)."""
  return make_config(data_dir, cache_dir, **extra).to_dict()


def config_flags(values: Mapping[str, Any]) -> list[str]:
  """--config.<key>=<python literal> flags, as a user would type them."""
  return [f"--config.{key}={value!r}" if not isinstance(value, str) else f"--config.{key}={value}"
          for key, value in values.items()]


def subprocess_env(phases: tuple[str, ...] | None = None, pause: float = 0.5) -> dict[str, str]:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["PYTHONUNBUFFERED"] = "1"
  paths = [REPO] + ([PHASE_HOOKS] if phases is not None else [])
  env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  if phases is not None:
    env["CNNJAX_TEST_PHASES"] = ",".join(phases)
    env["CNNJAX_TEST_PAUSE"] = str(pause)
  return env


class TrainProcess:
  """`python train.py ...` in the background, its merged output read line by line."""

  def __init__(self, workdir: str, values: Mapping[str, Any], *,
               phases: tuple[str, ...] | None = None, pause: float = 0.5):
    self.args = [sys.executable, TRAIN_PY, f"--workdir={workdir}", "--verbosity=-1",
                 *config_flags(values)]
    self.proc = subprocess.Popen(
        self.args, cwd=REPO, env=subprocess_env(phases, pause), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    self.lines: list[str] = []
    self._queue: queue.Queue[str | None] = queue.Queue()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self._queue.put(line.rstrip("\n"))
    self._queue.put(None)

  @property
  def pid(self) -> int:
    return self.proc.pid

  def output(self) -> str:
    return "\n".join(self.lines)

  def wait_for(self, pattern: str, timeout: float) -> re.Match:
    """The first new output line matching `pattern` (AssertionError on exit or timeout)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        self.kill()
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f} s:\n"
                             + self.tail())
      try:
        line = self._queue.get(timeout=remaining)
      except queue.Empty:
        continue
      if line is None:
        self.proc.wait()
        raise AssertionError(f"train.py exited ({self.proc.returncode}) before printing a line "
                             f"matching {pattern!r}:\n" + self.tail())
      self.lines.append(line)
      match = regex.search(line)
      if match:
        return match

  def finish(self, timeout: float) -> int:
    """Waits for the process to exit and for its output; returns the exit code."""
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f"train.py did not finish within {timeout:.0f} s:\n" + self.tail())
    self._reader.join(timeout=10)
    while True:
      try:
        line = self._queue.get_nowait()
      except queue.Empty:
        break
      if line is not None:
        self.lines.append(line)
    return self.proc.returncode

  def kill(self) -> None:
    """SIGKILL, as a scheduler or the OOM killer would send it; waits until it is gone."""
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(timeout=30)

  def tail(self, n: int = 40) -> str:
    shown = [line for line in self.lines if not line.startswith(("I0", "W0"))]
    return "\n".join(shown[-n:])


def run_train_py(workdir: str, values: Mapping[str, Any], timeout: float = 240) -> TrainProcess:
  process = TrainProcess(workdir, values)
  process.finish(timeout)
  return process


_STAND_IN = r"""
import runpy, sys, types
import cnnjax.train
fake = types.ModuleType("cnnjax.train.loop")
fake.enable_compilation_cache = lambda path=None: None
def run(config, workdir):
  print("PARSED " + config.to_json(sort_keys=True))
  return {}
fake.run = run
sys.modules["cnnjax.train.loop"] = fake
cnnjax.train.loop = fake
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
print("HEAVY " + ",".join(m for m in ("jax", "tensorflow", "orbax") if m in sys.modules))
"""


def run_flags(*flags: str) -> subprocess.CompletedProcess:
  """train.py's own flag handling and main(), with the training loop replaced."""
  return subprocess.run([sys.executable, "-c", _STAND_IN, "--workdir", os.devnull, *flags],
                        cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                        timeout=120)


START_LINE = r"cnnjax: .*; (fresh start|resumed from step (\d+))"


def start_step(match: re.Match) -> int:
  """0 for a fresh start, else the step a run resumed from (from START_LINE)."""
  return int(match.group(2)) if match.group(2) else 0


def committed_steps(directory: str) -> list[int]:
  """Step directories orbax has committed (renamed from their temporary name)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def temporary_dirs(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory) if ".orbax-checkpoint-tmp" in name)


def enable_persistent_cache(path: str | None) -> tuple[Any, Any]:
  """Points this process's JAX compilation cache at `path`; returns the old settings.

  JAX decides once per process whether the persistent cache is used; tests
  that run after others have compiled must reset that decision (a private
  function; without it the cache is simply not used and the tests run slower).
  """
  import jax
  previous = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0 if path else previous[1])
  _reset_cache_decision()
  return previous


def restore_persistent_cache(previous: tuple[Any, Any]) -> None:
  import jax
  jax.config.update("jax_compilation_cache_dir", previous[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
  _reset_cache_decision()


def _reset_cache_decision() -> None:
  try:
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  reset = getattr(compilation_cache, "reset_cache", None)
  if reset is not None:
    reset()


def leaves(tree) -> list:
  import jax
  import numpy as np
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
