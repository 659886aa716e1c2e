"""Promise 1: a run SIGKILLed at any moment loses nothing.

One workdir, one chain of `python train.py` processes. Each process is
killed (SIGKILL, no chance to clean up) at a random point of a phase chosen
by its seed: right after a train step, inside a validation pass, or inside an
asynchronous checkpoint save whose files are written but not yet committed.
The next process must resume from the newest committed checkpoint, and the
chain must end with exactly the parameters and metrics of an uninterrupted
run. Along the way: a second train.py on the busy workdir is refused and told
who holds it, and the LOCK file a killed run leaves behind blocks nobody.

The same chain runs again with every core kept busy by busy-looping
processes, kills landing in saves whose background write is held back while
the next steps donate the saved state: still bitwise the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from reliability_helpers import (KILL_RUN, START_LINE, TrainProcess, committed_steps, leaves,
                                 overrides, run_train_py, start_step, temporary_dirs)

from cnnjax.train import checkpoint
from cnnjax.train import checkpoint_integrity as integrity
from cnnjax.train.writer import read_metrics

PHASES = ("eval", "step", "save")  # seed 0 also has a second train.py try the busy workdir
SEEDS = range(5)
PAUSE_S = 0.6  # the window a kill lands in; see phase_hooks/sitecustomize.py
LOCK_CHECK_PAUSE_S = 300.0  # seed 0 waits in its phase while the intruder starts
START_TIMEOUT_S = 240  # imports + restore on a loaded 2-core machine
PHASE_TIMEOUT_S = 120


def kill_plan(seed: int) -> tuple[str, int, float]:
  """(phase, train steps to let pass first, delay into the phase) of one seed.

  At most 4 steps first, and every phase comes round within 4 steps, so five
  processes never reach the end of KILL_RUN (40 steps) before their kill.
  """
  rng = random.Random(seed)
  phase = PHASES[seed] if seed < len(PHASES) else rng.choice(PHASES)
  return phase, rng.randint(2, 4), rng.uniform(0.0, 0.7 * PAUSE_S)


def _check_busy_workdir_is_refused(workdir: str, values: dict, holder: TrainProcess) -> None:
  """Promise 6 end to end: a second train.py on the same workdir refuses to start."""
  intruder = run_train_py(workdir, values, timeout=START_TIMEOUT_S)
  assert intruder.proc.returncode == 1, intruder.tail()
  output = intruder.output()
  assert "WorkdirLockedError" in output, intruder.tail()
  assert f"process {holder.pid} on host {socket.gethostname()}" in output, intruder.tail()
  assert holder.proc.poll() is None  # the holder was not disturbed


def _kill_chain(workdir: str, values: dict, plans, *, check_lock: bool) -> list:
  """One train.py per plan (phase, steps first, delay), each SIGKILLed in its phase."""
  checkpoints = os.path.join(workdir, checkpoint.LATEST_DIR)
  expected_start = 0
  log = []
  for number, (phase, steps_first, delay) in enumerate(plans):
    lock_check = check_lock and number == 0
    process = TrainProcess(workdir, values, phases=(phase,),
                           pause=LOCK_CHECK_PAUSE_S if lock_check else PAUSE_S)
    started = start_step(process.wait_for(START_LINE, START_TIMEOUT_S))
    assert started == expected_start, (
        f"kill {number}: resumed from step {started}, but the newest complete checkpoint "
        f"was {expected_start}\n{process.tail()}")
    for _ in range(steps_first):
      process.wait_for(r"^PHASE step ", PHASE_TIMEOUT_S)
    marker = process.wait_for(rf"^PHASE {phase}\b(.*)", PHASE_TIMEOUT_S)
    if lock_check:
      _check_busy_workdir_is_refused(workdir, values, process)
    else:
      time.sleep(delay)
    process.kill()

    committed = committed_steps(checkpoints)
    temporary = temporary_dirs(checkpoints)
    if committed:  # the newest committed checkpoint is complete (an older one may be
      # half deleted: orbax removes the oldest in place once a newer one is committed)
      problem = integrity.find_problem(os.path.join(checkpoints, str(max(committed))),
                                       required_items=("params", "meta"))
      assert problem is None, f"kill {number}: committed step {max(committed)} is damaged: {problem}"
    if phase == "save" and marker.group(1).split()[1] == "latest":
      saving = int(marker.group(1).split()[0])
      # Killed between writing and the atomic rename: the step must not look complete.
      assert saving not in committed, (number, marker.group(0), committed)
    if lock_check:
      assert os.path.exists(os.path.join(workdir, "LOCK"))  # left behind, stale
    log.append((number, phase, marker.group(0), started, committed, temporary))
    expected_start = max(committed, default=0)

  assert sum(started > 0 for _, _, _, started, _, _ in log) >= 2, (
      f"too few processes resumed from a checkpoint to test resuming: {log}")

  final = run_train_py(workdir, values, timeout=START_TIMEOUT_S)
  assert final.proc.returncode == 0, final.tail()
  resumed = [line for line in final.lines if "cnnjax:" in line]
  assert resumed and resumed[0].endswith(
      f"resumed from step {expected_start}" if expected_start else "fresh start"), resumed
  # At least one kill caught orbax with a save written to its temporary directory.
  assert any(temporary for _, phase, _, _, _, temporary in log if phase == "save"), log
  assert temporary_dirs(checkpoints) == [], "unfinished saves were not cleaned up"
  return log


def _assert_same_as_uninterrupted(workdir: str, reference_dir: str) -> None:
  """Nothing lost: the same parameters and validation results as without kills."""
  ours, meta = checkpoint.restore_variables(workdir)
  theirs, reference_meta = checkpoint.restore_variables(reference_dir)
  assert meta["step"] == reference_meta["step"] == KILL_RUN["run.num_steps"]
  for a, b in zip(leaves(ours), leaves(theirs)):
    np.testing.assert_array_equal(a, b)
  # metrics.jsonl: the uninterrupted run's rows, each once and in its order (rows
  # recomputed after a resume supersede the earlier ones when read).
  def rows(directory):
    return [(r["split"], r["step"], r["loss"]) for r in read_metrics(directory)]
  assert rows(workdir) == rows(reference_dir)


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_from_newest_complete_checkpoint(
    tmp_path, digits_dir, cache_dir, reference_run):
  workdir = str(tmp_path / "killed")
  values = overrides(digits_dir, cache_dir, **KILL_RUN)
  log = _kill_chain(workdir, values, [kill_plan(seed) for seed in SEEDS], check_lock=True)
  _assert_same_as_uninterrupted(workdir, reference_run[0])
  print("kill points survived:", log)


@contextlib.contextmanager
def cpu_load(workers: int):
  """`workers` busy-looping processes (each wants a whole core) for the duration."""
  hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(workers)]
  try:
    yield
  finally:
    for hog in hogs:
      hog.kill()
    for hog in hogs:
      hog.wait(timeout=30)


# Kills inside saves (the background write held just before orbax's commit while the
# main thread trains on, donating the state just saved) and one right after a step; each
# process first lets a checkpoint (every 3 steps) commit, so the next one resumes.
STRESS_PLANS = (("save", 5, 0.1), ("save", 5, 0.4), ("step", 4, 0.2))


@pytest.mark.slow
def test_kill_and_resume_is_bit_exact_under_cpu_load(tmp_path, digits_dir, cache_dir,
                                                     reference_run):
  """The same chain with every core already busy (two busy loops per core): slow saves,
  starved threads, steps that overtake the background write. Still bitwise equal."""
  workdir = str(tmp_path / "loaded")
  values = overrides(digits_dir, cache_dir, **KILL_RUN)
  reference_dir, _ = reference_run  # computed before the load starts
  with cpu_load(2 * (os.cpu_count() or 1)):
    log = _kill_chain(workdir, values, STRESS_PLANS, check_lock=False)
  _assert_same_as_uninterrupted(workdir, reference_dir)
  print("kill points survived under load:", log)
