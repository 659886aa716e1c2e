"""Promise 6: one writer per workdir, and a lock left by a dead process blocks nobody.

The end-to-end case (a second `python train.py` on a busy workdir) runs in
test_kill_resume.py, whose first process is the holder; here the lock is
checked directly and through `cnnjax.train.run`, against real processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from reliability_helpers import REPO, subprocess_env

from cnnjax.errors import WorkdirLockedError
from cnnjax.train import loop, run
from cnnjax.train.workdir_lock import LOCK_FILE, WorkdirLock, read_owner

_HOLDER = """
import sys, time
from cnnjax.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def holder(tmp_path):
  """A separate process holding the lock of tmp_path/'busy' until it is killed."""
  workdir = str(tmp_path / "busy")
  process = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=REPO,
                             env=subprocess_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline().strip() == "locked"
    yield workdir, process
  finally:
    if process.poll() is None:
      process.kill()
    process.wait(timeout=30)


def test_busy_workdir_is_refused_before_any_compute_naming_the_holder(holder, tiny_config,
                                                                     monkeypatch):
  workdir, process = holder

  def no_compute(*args, **kwargs):
    raise AssertionError("did work on a workdir locked by another process")
  monkeypatch.setattr(loop, "_Run", no_compute)
  with pytest.raises(WorkdirLockedError) as info:
    run(tiny_config(), workdir)
  message = str(info.value)
  assert f"process {process.pid} on host {socket.gethostname()}" in message, message
  assert workdir in message
  assert read_owner(os.path.join(workdir, LOCK_FILE)).pid == process.pid  # untouched


def test_lock_of_a_killed_process_blocks_nobody(holder):
  workdir, process = holder
  with pytest.raises(WorkdirLockedError):
    WorkdirLock(workdir).acquire()
  os.kill(process.pid, signal.SIGKILL)
  process.wait(timeout=30)
  assert read_owner(os.path.join(workdir, LOCK_FILE)).pid == process.pid  # stale file stays
  with WorkdirLock(workdir) as lock:
    assert lock.held
    assert read_owner(lock.path).pid == os.getpid()
  assert not os.path.exists(os.path.join(workdir, LOCK_FILE))


@pytest.mark.parametrize("recorded_pid", ["parent", "self", "init"])
def test_stale_lock_file_naming_a_live_pid_blocks_nobody(tmp_path, recorded_pid):
  """A dead run's pid is often reused (containers restart with the same pids)."""
  pid = {"parent": os.getppid(), "self": os.getpid(), "init": 1}[recorded_pid]
  workdir = str(tmp_path / "stale")
  os.makedirs(workdir)
  with open(os.path.join(workdir, LOCK_FILE), "w") as f:
    f.write(f"{socket.gethostname()} {pid}\n")
  lock = WorkdirLock(workdir)
  lock.acquire()
  assert read_owner(lock.path).pid == os.getpid()
  lock.release()


def test_two_holders_in_one_process_exclude_each_other(tmp_path):
  workdir = str(tmp_path / "twice")
  first = WorkdirLock(workdir)
  first.acquire()
  try:
    with pytest.raises(WorkdirLockedError, match=f"process {os.getpid()}"):
      WorkdirLock(workdir).acquire()
  finally:
    first.release()
  WorkdirLock(workdir).acquire()  # free again


def test_racing_acquirers_get_exactly_one_lock(tmp_path):
  workdir = str(tmp_path / "race")
  locks = [WorkdirLock(workdir) for _ in range(8)]
  barrier = threading.Barrier(len(locks))
  results = []

  def contend(lock):
    barrier.wait()
    try:
      lock.acquire()
      results.append("won")
    except WorkdirLockedError:
      results.append("refused")

  threads = [threading.Thread(target=contend, args=(lock,)) for lock in locks]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(results) == ["refused"] * (len(locks) - 1) + ["won"]
  for lock in locks:
    lock.release()


def test_release_then_reacquire_leaves_no_lock_file(tmp_path):
  workdir = str(tmp_path / "cycle")
  for _ in range(3):
    with WorkdirLock(workdir):
      assert os.path.exists(os.path.join(workdir, LOCK_FILE))
    assert not os.path.exists(os.path.join(workdir, LOCK_FILE))
