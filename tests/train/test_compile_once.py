"""The loop compiles each step function once per run.

"Once" means: within one `cnnjax.train.run(config, workdir)` call, JAX builds
one executable of the train step, one of the eval step and one of the
plateau update (`steps.train_step_fn`, `eval_step_fn`, `after_validation_fn`),
however many steps, validations, plateau updates and checkpoints the run
has. A build is counted from JAX's '/jax/core/compile/backend_compile_duration'
event (`benchmarks.gpu_check.CompileCounter`), which fires whenever JAX needs
an executable it has not built in this process, so a second one would mean
the loop fed a step inputs of another shape, dtype, weak type or sharding
(e.g. a restored or plateau-updated state that differs from a fresh one).

A second `run()` in the same process, resuming the first one's checkpoint,
may build each step again (at most once: new jit objects, a restored state),
or reuse the first run's executables; it must not build one twice either.
"""

from __future__ import annotations

import json
import os

import pytest

from benchmarks.gpu_check import CompileCounter

STEP_FUNCTIONS = ("train_step_fn", "eval_step_fn", "after_validation_fn")


def _counts(counter: CompileCounter) -> dict[str, int]:
  return {name: counter.count(name) for name in STEP_FUNCTIONS}


@pytest.fixture(scope="module")
def two_runs(digits_dir, tmp_path_factory):
  """A run stopped after 5 of 8 steps, then a second run() resuming it to the end."""
  from train_helpers import make_tiny_config

  from cnnjax.train import run
  workdir = str(tmp_path_factory.mktemp("compile_once"))
  # Plateau schedule with patience 1: the validation error feeds the learning
  # rate through after_validation, which changes lr_control arrays in the state.
  config = make_tiny_config(digits_dir, **{
      "run.num_steps": 8, "schedule.name": "plateau", "schedule.plateau.patience": 1,
      "eval.every_steps": 2, "checkpoint.every_steps": 2, "run.log_every_steps": 1})
  with CompileCounter() as first:
    first_summary = run(config, workdir, stop_after_steps=5)
  first_summary["checkpoints"] = _checkpoints(workdir)
  with CompileCounter() as second:
    second_summary = run(config, workdir)
  second_summary["checkpoints"] = _checkpoints(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return first, first_summary, second, second_summary, rows, workdir


def _checkpoints(workdir: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_the_runs_validate_checkpoint_and_resume(two_runs):
  _, first_summary, _, second_summary, rows, _ = two_runs
  assert first_summary["interrupted"] and first_summary["step"] == 5
  assert not second_summary["interrupted"] and second_summary["step"] == 8
  validations = sorted({row["step"] for row in rows if row.get("split") == "test"})
  assert validations == [2, 4, 6, 8]
  assert first_summary["checkpoints"][-2:] == [4, 5]  # every 2 steps, and where it stopped
  assert second_summary["checkpoints"][-2:] == [6, 8]


def test_each_step_function_compiles_once_in_the_first_run(two_runs):
  first = two_runs[0]
  assert _counts(first) == dict.fromkeys(STEP_FUNCTIONS, 1), first.names


def test_the_resumed_run_compiles_each_step_function_at_most_once(two_runs):
  second = two_runs[2]
  counts = _counts(second)
  assert all(n <= 1 for n in counts.values()), (counts, second.names)
