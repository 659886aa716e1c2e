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

import errno
import fcntl
import time

import filelock
import pytest
from reliability_helpers import REPO, subprocess_env

from cnnjax.errors import WorkdirLockedError
from cnnjax.train import loop, run
from cnnjax.train import workdir_lock
from cnnjax.train.workdir_lock import (LOCK_FILE, OWNER_FILE, LockOwner, WorkdirLock,
                                       acquire_for_run, read_owner)

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
  monkeypatch.setattr(loop, "train_and_evaluate", no_compute)
  with pytest.raises(WorkdirLockedError) as info:
    run(tiny_config(), workdir)
  message = str(info.value)
  assert f"process {process.pid} on host {socket.gethostname()}" in message, message
  assert workdir in message
  assert read_owner(workdir).pid == process.pid  # untouched


def test_lock_of_a_killed_process_blocks_nobody(holder):
  workdir, process = holder
  with pytest.raises(WorkdirLockedError):
    WorkdirLock(workdir).acquire()
  os.kill(process.pid, signal.SIGKILL)
  process.wait(timeout=30)
  assert read_owner(workdir).pid == process.pid  # stale record stays
  with WorkdirLock(workdir) as lock:
    assert lock.held and lock.kernel_lock
    assert read_owner(workdir).pid == os.getpid()
  assert not os.path.exists(os.path.join(workdir, OWNER_FILE))


@pytest.mark.parametrize("recorded_pid", ["parent", "self", "init"])
def test_stale_lock_file_naming_a_live_pid_blocks_nobody(tmp_path, recorded_pid):
  """A dead run's pid is often reused (containers restart with the same pids)."""
  pid = {"parent": os.getppid(), "self": os.getpid(), "init": 1}[recorded_pid]
  workdir = str(tmp_path / "stale")
  os.makedirs(workdir)
  with open(os.path.join(workdir, OWNER_FILE), "w") as f:
    f.write(f"{socket.gethostname()} {pid} {time.time()} 0\n")
  lock = WorkdirLock(workdir)
  lock.acquire()
  assert read_owner(workdir).pid == os.getpid()
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


def test_release_then_reacquire_leaves_no_owner_record(tmp_path):
  workdir = str(tmp_path / "cycle")
  for _ in range(3):
    with WorkdirLock(workdir):
      assert os.path.exists(os.path.join(workdir, LOCK_FILE))
      assert read_owner(workdir).same_process(LockOwner.this_process())
    assert not os.path.exists(os.path.join(workdir, OWNER_FILE))


# -- filesystems without kernel locks --------------------------------------------------------


@pytest.fixture(params=[errno.ENOSYS, errno.ENOLCK], ids=["ENOSYS", "ENOLCK"])
def no_flock(request, monkeypatch):
  """A filesystem without flock: the system call itself fails, under filelock's own code.

  ENOSYS: FUSE mounts without lock support (filelock >= 3.30 would quietly use its own
  marker file instead); ENOLCK: NFS without lockd.
  """
  code = request.param

  def refuse(fd, operation):
    if operation & fcntl.LOCK_UN:
      return None
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(fcntl, "flock", refuse)
  return code


def test_a_filesystem_without_flock_gets_a_lease_not_a_silent_marker_file(tmp_path, no_flock,
                                                                         caplog):
  """filelock must not fall back to its own lock file while cnnjax reports a kernel lock."""
  workdir = str(tmp_path / "no_flock")
  with WorkdirLock(workdir) as lock:
    assert lock.held and not lock.kernel_lock
    assert read_owner(workdir).same_process(LockOwner.this_process())
    with pytest.raises(WorkdirLockedError, match="heartbeat"):
      WorkdirLock(workdir).acquire()
  assert "no file locks" in caplog.text


def _record(workdir, owner: LockOwner) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, OWNER_FILE), "w") as f:
    f.write(owner.record())


def test_without_flock_a_fresh_lease_on_another_host_refuses(tmp_path, no_flock, caplog):
  workdir = str(tmp_path / "lease")
  now = time.time()
  _record(workdir, LockOwner("other-host", 4242, now - 60, now - 10))
  with pytest.raises(WorkdirLockedError, match="process 4242 on host other-host.*heartbeat"):
    WorkdirLock(workdir).acquire()


def test_without_flock_an_expired_lease_on_another_host_is_taken_over(tmp_path, no_flock,
                                                                     caplog):
  """A holder on another host that died must not block the workdir forever."""
  workdir = str(tmp_path / "expired")
  long_ago = time.time() - workdir_lock.LEASE_S - 60
  _record(workdir, LockOwner("other-host", 4242, long_ago, long_ago))
  with WorkdirLock(workdir) as lock:
    assert lock.held and not lock.kernel_lock
    assert read_owner(workdir).same_process(LockOwner.this_process())
  warnings = " ".join(r.getMessage() for r in caplog.records)
  assert "no file locks" in warnings and "expired" in warnings, warnings
  assert not os.path.exists(os.path.join(workdir, OWNER_FILE))


def test_without_flock_a_dead_pid_on_this_host_is_taken_over(tmp_path, no_flock):
  workdir = str(tmp_path / "dead")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait(timeout=30)
  now = time.time()
  _record(workdir, LockOwner(socket.gethostname(), dead.pid, now, now))
  with WorkdirLock(workdir) as lock:
    assert lock.held


def test_without_flock_a_live_holder_refuses_and_its_heartbeat_advances(tmp_path, no_flock,
                                                                       monkeypatch):
  monkeypatch.setattr(workdir_lock, "LEASE_REFRESH_S", 0.05)
  workdir = str(tmp_path / "live")
  with WorkdirLock(workdir) as lock:
    first = read_owner(workdir).heartbeat
    with pytest.raises(WorkdirLockedError, match=f"process {os.getpid()}"):
      WorkdirLock(workdir).acquire()
    deadline = time.monotonic() + 10
    while read_owner(workdir).heartbeat == first and time.monotonic() < deadline:
      time.sleep(0.05)
    assert read_owner(workdir).heartbeat > first
    assert lock.held


# -- several processes -----------------------------------------------------------------------


def test_acquire_for_run_refusal_reaches_every_process(tmp_path, monkeypatch):
  """Process 0 is refused; process 1 must raise the same message (naming the holder)
  from the shared outcome, without touching the lock itself."""
  import jax
  workdir = str(tmp_path / "shared")
  message = f"workdir {workdir} is in use by process 77 on host h1 (started ...)"
  shared = []
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(WorkdirLock, "acquire",
                      lambda self: pytest.fail("process 1 took the lock itself"))
  monkeypatch.setattr(workdir_lock, "_share_from_first_process",
                      lambda text: shared.append(text) or message)
  with pytest.raises(WorkdirLockedError) as info:
    with acquire_for_run(workdir):
      pytest.fail("process 1 went on after process 0 was refused")
  assert str(info.value) == message
  assert shared == [""]  # process 1 contributes nothing; process 0's text wins


def test_acquire_for_run_single_process_holds_and_releases(tmp_path):
  workdir = str(tmp_path / "single")
  with acquire_for_run(workdir) as lock:
    assert lock.held
    with pytest.raises(WorkdirLockedError):
      with acquire_for_run(workdir):
        pass
  assert not os.path.exists(os.path.join(workdir, OWNER_FILE))


def test_without_flock_a_dead_run_that_had_this_very_pid_blocks_nobody(tmp_path, no_flock):
  """Containers restart with the same pids: a fresh record naming this host and this pid,
  not held by this process, is a dead predecessor's."""
  workdir = str(tmp_path / "reused_pid")
  now = time.time()
  _record(workdir, LockOwner(socket.gethostname(), os.getpid(), now - 5, now - 5))
  with WorkdirLock(workdir) as lock:
    assert lock.held
    with pytest.raises(WorkdirLockedError):  # while this process holds it, it is held
      WorkdirLock(workdir).acquire()


# -- one owner, always: compare-and-swap takeover, a stalled holder stops ----------------------


def test_two_takers_of_an_expired_lease_at_once_exactly_one_wins(tmp_path, no_flock,
                                                                monkeypatch):
  """Every taker has judged the expired record before any acts on it, and then they act one
  after another (forced): only the first may take it over, and the record must name it."""
  long_ago = time.time() - workdir_lock.LEASE_S - 60
  real_lease_is_live = workdir_lock.lease_is_live
  workdir = str(tmp_path / "expired")
  _record(workdir, LockOwner("other-host", 4242, long_ago, long_ago))
  takers = [WorkdirLock(workdir) for _ in range(4)]
  judged = threading.Barrier(len(takers))
  done = [threading.Event() for _ in takers]
  turn = threading.local()

  def judged_together_then_in_turn(owner, **kwargs):
    live = real_lease_is_live(owner, **kwargs)
    judged.wait(timeout=30)
    if turn.index:
      done[turn.index - 1].wait(timeout=30)
    return live
  monkeypatch.setattr(workdir_lock, "lease_is_live", judged_together_then_in_turn)
  won = []

  def take(index, lock):
    turn.index = index
    try:
      lock.acquire()
      won.append(lock)
    except WorkdirLockedError:
      pass
    finally:
      done[index].set()

  threads = [threading.Thread(target=take, args=(i, lock)) for i, lock in enumerate(takers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  try:
    assert won == takers[:1], f"{len(won)} takers won"
    assert read_owner(workdir).same_process(LockOwner.this_process())
    assert read_owner(workdir).token == takers[0]._owner.token  # pylint: disable=protected-access
  finally:
    for lock in takers:
      lock.release()


_LEASED_WORKER = """
import errno, fcntl, os, sys, time
def no_flock(fd, operation):
  if operation & fcntl.LOCK_UN:
    return None
  raise OSError(errno.ENOSYS, "Function not implemented")
fcntl.flock = no_flock
from cnnjax.train import workdir_lock
workdir_lock.LEASE_S = float(sys.argv[2])
workdir_lock.LEASE_REFRESH_S = 0.1
workdir_lock.CONFIRM_EVERY_S = workdir_lock.LEASE_S / 2
lock = workdir_lock.WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
step = 0
try:
  while True:  # a run: check the lease, then write this step's output
    lock.check()
    step += 1
    with open(sys.argv[3], "a") as f:
      f.write(f"{step}\\n")
    time.sleep(0.02)
except workdir_lock.WorkdirLeaseLostError as error:
  print("LOST", error, flush=True)
  sys.exit(3)
"""


def test_a_holder_stopped_past_its_lease_stops_when_it_resumes_and_writes_nothing(
    tmp_path, no_flock, monkeypatch):
  """A holder frozen (SIGSTOP) past LEASE_S is taken over; once it runs again it must find
  out before its next write, stop with a named error, and leave the new record alone."""
  lease_s = 2.0
  monkeypatch.setattr(workdir_lock, "LEASE_S", lease_s)
  workdir = str(tmp_path / "stalled")
  written = str(tmp_path / "steps_written")
  holder = subprocess.Popen([sys.executable, "-c", _LEASED_WORKER, workdir, str(lease_s), written],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  try:
    seen = []
    while not seen or seen[-1] != "locked":
      line = holder.stdout.readline()
      assert line, "".join(seen)
      seen.append(line.strip())
    deadline = time.monotonic() + 30
    while not os.path.exists(written) and time.monotonic() < deadline:
      time.sleep(0.05)
    os.kill(holder.pid, signal.SIGSTOP)
    time.sleep(lease_s + 0.5)  # alive (stopped), but its heartbeat is now too old
    with open(written) as f:
      steps_before = f.read()
    taker = WorkdirLock(workdir)
    taker.acquire()
    try:
      mine = read_owner(workdir)
      assert mine.same_process(LockOwner.this_process())
      os.kill(holder.pid, signal.SIGCONT)
      output, _ = holder.communicate(timeout=60)
      assert holder.returncode == 3, output
      assert "LOST" in output and f"process {os.getpid()}" in output, output
      with open(written) as f:
        assert f.read() == steps_before, "the stopped holder wrote after it was taken over"
      time.sleep(0.3)  # its refresh thread had every chance to overwrite the record
      assert read_owner(workdir).token == mine.token
      taker.check()  # the new holder still holds it
    finally:
      taker.release()
  finally:
    if holder.poll() is None:
      os.kill(holder.pid, signal.SIGCONT)
      holder.kill()
    holder.wait(timeout=30)


def test_a_run_whose_lease_is_taken_over_stops_at_the_next_step_writing_nothing_more(
    tmp_path, no_flock, tiny_config, monkeypatch):
  """Through the training loop: the record changes hands after step 3 (another run took it
  over); step 4 must raise the named error before its metrics row or checkpoint."""
  from cnnjax.train import checkpoint
  from cnnjax.train.writer import read_metrics
  monkeypatch.setattr(workdir_lock, "CONFIRM_EVERY_S", 0.0)  # re-read the record every step
  workdir = str(tmp_path / "taken")
  real_write_train_row = loop.write_train_row
  thief = LockOwner("other-host", 4242, time.time(), time.time(), token="f00d")

  def write_then_lose_the_lease(r, writer, bar, state, window, step, window_start):
    real_write_train_row(r, writer, bar, state, window, step, window_start)
    if step == 3:
      os.replace(_stage(workdir, thief), os.path.join(workdir, OWNER_FILE))
  monkeypatch.setattr(loop, "write_train_row", write_then_lose_the_lease)
  with pytest.raises(workdir_lock.WorkdirLeaseLostError, match="process 4242 on host other-host"):
    run(tiny_config(num_steps=6, checkpoint_every_steps=1), workdir)
  assert max(row["step"] for row in read_metrics(workdir)) == 3
  assert max(checkpoint._steps_in(os.path.join(workdir, checkpoint.LATEST_DIR))) == 3  # pylint: disable=protected-access
  assert read_owner(workdir).token == thief.token  # left alone


def _stage(workdir: str, owner: LockOwner) -> str:
  staged = os.path.join(workdir, "staged-record")
  with open(staged, "w") as f:
    f.write(owner.record())
  return staged
