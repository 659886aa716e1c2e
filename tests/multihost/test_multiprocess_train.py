"""`python train.py --multihost` with 2 processes x 2 CPU devices on loopback (gloo collectives).

The first launch trains, validates and checkpoints; its last step is both the
newest and the best checkpoint (the case two orbax managers crashed on: the same
step saved twice under one barrier name). The second launch, with more steps,
resumes from it until SIGTERM reaches one of its processes; a third, 1 process x
4 devices, resumes from where both stopped. metrics.jsonl must be written by
process 0 alone. The workdir lock and the resume decision are checked with every
process taking part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cnnjax.train import checkpoint
from cnnjax.train import checkpoint_integrity as integrity
from cnnjax.train.workdir_lock import WorkdirLock
from cnnjax.train.writer import METRICS_FILE, read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN = os.path.join(REPO, "train.py")
WORKER = os.path.join(HERE, "multiprocess_worker.py")
LAUNCH_TIMEOUT_S = 300  # imports + compiles on a loaded 2-core machine
FIRST_STEPS = 4

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices_per_process: int) -> dict[str, str]:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return env


def _launch(commands: list[list[str]], env: dict[str, str], timeout: float):
  """Runs one command per process at once; [(returncode, output)] in process order."""
  processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for command in commands]
  results = []
  try:
    for process in processes:
      output, _ = process.communicate(timeout=timeout)
      results.append((process.returncode, output))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  return results


def _train_py_command(workdir: str, data_dir: str, cache_dir: str, num_steps: int,
                      keep: int) -> list[str]:
  return [sys.executable, TRAIN, f"--workdir={workdir}", f"--config.input.data_dir={data_dir}",
          "--config.model.kwargs={'stage_sizes': (1, 1, 1), 'width_multiplier': 0.25}",
          "--config.input.image_size=16", "--config.run.batch_size=16", "--config.eval.batch_size=64",
          "--config.eval.num_batches=1", "--config.schedule.name=constant",
          "--config.schedule.warmup_steps=-1", "--config.run.log_every_steps=1",
          "--config.checkpoint.every_steps=2", "--config.eval.every_steps=-1",
          f"--config.checkpoint.keep={keep}", "--config.run.progress_bar=false",
          f"--config.run.num_steps={num_steps}", f"--config.run.compilation_cache_dir={cache_dir}"]


def _two_process_commands(*args, **kwargs) -> list[list[str]]:
  port = _free_port()
  common = _train_py_command(*args, **kwargs) + [
      "--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  return [common + [f"--process_id={i}"] for i in range(2)]


def _train_py(*args, **kwargs):
  """The 2-process train.py launch: [(returncode, output)] of processes 0 and 1."""
  return _launch(_two_process_commands(*args, **kwargs), _env(2), LAUNCH_TIMEOUT_S)


def _start_train_py(log_dir, *args, **kwargs) -> list[tuple[subprocess.Popen, str]]:
  """The 2-process launch, running: [(process, its log file)] (files: no pipe to fill)."""
  started = []
  for index, command in enumerate(_two_process_commands(*args, **kwargs)):
    log_path = os.path.join(log_dir, f"process_{index}.log")
    with open(log_path, "w") as log_file:
      started.append((subprocess.Popen(command, cwd=REPO, env=_env(2), stdout=log_file,
                                       stderr=subprocess.STDOUT, text=True), log_path))
  return started


def _workers(mode: str, workdir: str):
  port = _free_port()
  return _launch([[sys.executable, WORKER, f"127.0.0.1:{port}", str(i), mode, workdir]
                  for i in range(2)], _env(1), 180)


def _result(output: str) -> dict:
  lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
  assert lines, output[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def _ok(results) -> None:
  for index, (returncode, output) in enumerate(results):
    assert returncode == 0, f"process {index}:\n{output[-4000:]}"
    assert "Traceback" not in output, f"process {index}:\n{output[-4000:]}"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, digits_dir):
  """(workdir, pristine copy, cache dir, outputs) of the first 2-process launch."""
  root = tmp_path_factory.mktemp("multihost")
  workdir, cache = str(root / "run"), str(root / "jax_cache")
  results = _train_py(workdir, digits_dir, cache, FIRST_STEPS, keep=2)
  _ok(results)
  pristine = str(root / "pristine")
  shutil.copytree(workdir, pristine)
  return workdir, pristine, cache, results


def test_two_processes_train_validate_and_commit_the_last_step_as_newest_and_best(first_run):
  workdir, _, _, results = first_run
  assert "final held-out error" in results[0][1]
  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  steps = checkpoint._steps_in(directory)  # pylint: disable=protected-access
  assert steps == [2, FIRST_STEPS]
  for step in steps:
    assert integrity.find_problem(os.path.join(directory, str(step)),
                                  required_items=checkpoint.REQUIRED_ITEMS) is None
  _, best_meta = checkpoint.restore_variables(workdir, which="best")
  _, newest_meta = checkpoint.restore_variables(workdir)
  assert best_meta["step"] == newest_meta["step"] == FIRST_STEPS
  assert [p for p in os.listdir(directory) if integrity.ORBAX_TMP_MARKER in p] == []


def test_metrics_are_written_once_by_process_0(first_run):
  workdir, _, _, _ = first_run
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    written = [json.loads(line) for line in f if line.strip()]
  keys = [(row["split"], row["step"]) for row in written]
  assert len(keys) == len(set(keys)), keys  # a second writer would duplicate every row
  assert keys == [("train", s) for s in range(1, FIRST_STEPS + 1)] + [("test", FIRST_STEPS)]


def test_every_process_resumes_from_the_step_process_0_chose(first_run):
  """Process 0 moves the damaged newest checkpoint; both resume from the previous one."""
  _, pristine, _, _ = first_run
  workdir = pristine + "_damaged"
  shutil.copytree(pristine, workdir)
  params = os.path.join(workdir, checkpoint.LATEST_DIR, str(FIRST_STEPS), "params")
  largest = max((os.path.join(root, name) for root, _, names in os.walk(params) for name in names),
                key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  results = _workers("resume_step", workdir)
  _ok(results)
  assert [_result(output)["step"] for _, output in results] == [2, 2]
  assert checkpoint._steps_in(os.path.join(workdir, checkpoint.LATEST_DIR)) == [2]  # pylint: disable=protected-access
  assert len(os.listdir(os.path.join(workdir, checkpoint.QUARANTINE_DIR))) == 1


def test_a_refused_lock_stops_every_process_with_the_holder_named(tmp_path):
  workdir = str(tmp_path / "busy")
  with WorkdirLock(workdir):
    results = _workers("lock", workdir)
  _ok(results)
  refusals = [_result(output)["refused"] for _, output in results]
  assert refusals[0] and refusals[0] == refusals[1], refusals
  assert f"process {os.getpid()} on host {socket.gethostname()}" in refusals[0]
  assert all(_result(output)["seconds"] < 30 for _, output in results)


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_on_one_process(
    first_run, digits_dir, tmp_path):
  """Second launch: resumes from the first, then SIGTERM reaches process 1 only (as when
  one host is preempted); both must save the same step and exit cleanly. A third launch,
  1 process x 4 devices, resumes from that checkpoint and finishes."""
  workdir, _, cache, _ = first_run
  started = _start_train_py(str(tmp_path), workdir, digits_dir, cache, num_steps=10_000, keep=1)
  processes = [process for process, _ in started]
  try:
    _wait_for_row(workdir, "train", FIRST_STEPS + 2, started)
    processes[1].send_signal(signal.SIGTERM)
    for process in processes:
      process.wait(timeout=LAUNCH_TIMEOUT_S)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  outputs = [open(log_path).read() for _, log_path in started]
  _ok([(process.returncode, output) for process, output in zip(processes, outputs)])
  assert f"resumed from step {FIRST_STEPS}" in outputs[0], outputs[0][-3000:]
  match = re.search(r"saved step (\d+)", outputs[0])
  assert match, outputs[0][-3000:]
  stopped = int(match.group(1))
  assert stopped > FIRST_STEPS
  steps = checkpoint._steps_in(os.path.join(workdir, checkpoint.LATEST_DIR))  # pylint: disable=protected-access
  assert steps[-1] == stopped, steps
  assert 2 not in steps, steps  # keep=1 plus the best
  assert checkpoint.restore_variables(workdir, which="best")[1]["step"] in steps

  single = _launch([_train_py_command(workdir, digits_dir, cache, stopped + 2, keep=1)],
                   _env(4), LAUNCH_TIMEOUT_S)
  _ok(single)
  assert f"resumed from step {stopped}" in single[0][1], single[0][1][-3000:]
  assert "final held-out error" in single[0][1]
  assert [row["step"] for row in read_metrics(workdir, "train")] == list(range(1, stopped + 3))
  validation = {row["step"]: row["top1_error"] for row in read_metrics(workdir, "test")}
  assert FIRST_STEPS in validation and stopped + 2 in validation
  _, best_meta = checkpoint.restore_variables(workdir, which="best")
  assert validation[best_meta["step"]] == min(validation.values())


def _wait_for_row(workdir: str, split: str, step: int, started, timeout: float = 240) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    for process, log_path in started:
      if process.poll() is not None:
        pytest.fail(f"a process ended early:\n{open(log_path).read()[-3000:]}")
    rows = read_metrics(workdir, split) if os.path.exists(os.path.join(workdir, METRICS_FILE)) else []
    if any(row["step"] >= step for row in rows):
      return
    time.sleep(0.5)
  pytest.fail(f"no {split} row of step {step} within {timeout} s")
