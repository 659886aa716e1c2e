"""One writer per workdir: an exclusive lock that dies with the process holding it.

Two runs writing the same workdir would interleave checkpoints and metrics
and corrupt both. `WorkdirLock(workdir).acquire()` therefore takes an
exclusive lock on `<workdir>/LOCK` with `filelock` (an flock on POSIX) and
records "<host> <pid> <start time>" in `<workdir>/LOCK.owner`, so a second
run can say who holds the workdir. The kernel drops the lock when the holder
exits for any reason (normal exit, exception, SIGKILL, OOM killer), so files
left behind by a killed run never block the restart, and no pid liveness
guessing is needed (pids are reused; in containers a restarted job often gets
the very pid its dead predecessor wrote).

A multi-process run calls `acquire_for_run(workdir)` in every process:
process 0 takes the lock and tells the others the outcome, so when it is
refused every process stops within seconds with the same message.

Without kernel locks (a FUSE or NFS mount without flock, an object store such
as gs://) the owner record is a lease instead: the holder rewrites its
heartbeat every LEASE_REFRESH_S seconds and a record is stale once its
heartbeat is older than LEASE_S (or, on the same host, once its pid is gone),
so a holder on another host that died does not block the workdir forever.
Such a lease is advisory, not atomic: a warning says so at start-up, and
making sure that one job at a time writes a workdir is then the launcher's
job (one Kubernetes Job / SLURM job per workdir).

Needs the standard library, filelock and etils; jax only in acquire_for_run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

import filelock
from etils import epath

from cnnjax.errors import WorkdirLockedError

LOCK_FILE = "LOCK"
OWNER_FILE = "LOCK.owner"
# Without kernel locks: the holder refreshes its record this often, and a record
# whose heartbeat is older than LEASE_S belongs to a holder that is gone.
LEASE_REFRESH_S = 30.0
LEASE_S = 300.0
# flock failures that mean "this filesystem has no locks", not "someone holds it".
_NO_LOCK_SUPPORT = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# The winner of a race writes its record right after locking; a loser waits this
# long for that record so that its error message can say who won.
_OWNER_WAIT_S = 1.0
# Longest refusal message shared between processes (bytes of UTF-8).
_MESSAGE_BYTES = 4096

log = logging.getLogger(__name__)
# Workdirs whose lease this process holds: a record naming this host and pid is this
# process's own only if listed here (else a dead run's, whose pid this one reuses).
_LEASES_HELD_HERE: set[str] = set()


@dataclasses.dataclass(frozen=True)
class LockOwner:
  """Who holds a workdir, as recorded in its LOCK.owner file."""
  host: str
  pid: int
  started: float = 0.0  # time.time() when the lock was taken
  heartbeat: float = 0.0  # last refresh of a lease (no kernel lock); 0 otherwise

  def __str__(self) -> str:
    text = f"process {self.pid} on host {self.host}"
    if self.started:
      text += f" (started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started))})"
    return text

  def same_process(self, other: LockOwner) -> bool:
    return (self.host, self.pid) == (other.host, other.pid)

  @classmethod
  def this_process(cls, started: float | None = None) -> LockOwner:
    return cls(socket.gethostname(), os.getpid(), time.time() if started is None else started)

  def record(self) -> str:
    return f"{self.host} {self.pid} {self.started:.3f} {self.heartbeat:.3f}\n"


def parse_owner(text: str) -> LockOwner | None:
  parts = text.split()
  if len(parts) < 2 or not parts[1].isdigit():
    return None
  try:
    numbers = [float(p) for p in parts[2:4]]
  except ValueError:
    return None
  return LockOwner(parts[0], int(parts[1]), *numbers)


def read_owner(workdir: epath.PathLike) -> LockOwner | None:
  """The owner recorded in a workdir's LOCK.owner, or None if missing, empty or garbled."""
  try:
    return parse_owner((epath.Path(workdir) / OWNER_FILE).read_text()[:300])
  except (OSError, UnicodeDecodeError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid exists on this host."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def lease_is_live(owner: LockOwner, *, now: float | None = None) -> bool:
  """Whether a lease record (no kernel lock) still holds the workdir."""
  now = time.time() if now is None else now
  if now - max(owner.heartbeat, owner.started) > LEASE_S:
    return False  # not refreshed: its holder is gone, wherever it ran
  if owner.host == socket.gethostname():
    return pid_alive(owner.pid)
  return True


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


class WorkdirLock:
  """An exclusive, crash-safe lock on a workdir (see the module docstring).

    lock = WorkdirLock(workdir)
    lock.acquire()        # WorkdirLockedError naming the holder if in use
    try: ...
    finally: lock.release()

  or `with WorkdirLock(workdir): ...`.
  """

  def __init__(self, workdir: epath.PathLike):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self.owner_path = self.workdir / OWNER_FILE
    self._file_lock: filelock.BaseFileLock | None = None
    self._lease_stop: threading.Event | None = None
    self._owner: LockOwner | None = None
    self.kernel_lock = False  # after acquire: whether the filesystem gave a real lock

  @property
  def held(self) -> bool:
    return self._owner is not None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError naming the process that holds it."""
    if self.held:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if not _is_local(self.workdir):
      log.warning("%s is on an object store, which has no file locks: cnnjax records a lease in "
                  "%s but cannot exclude a second writer; start one job per workdir", self.workdir,
                  self.owner_path)
      self._acquire_lease()
      return
    lock = filelock.FileLock(os.fspath(self.path), timeout=0)
    try:
      lock.acquire()
    except filelock.Timeout:
      raise WorkdirLockedError(self._in_use_message(self._wait_for_owner())) from None
    except NotImplementedError:  # filelock < 4 on a filesystem without flock
      self._acquire_without_kernel_lock()
      return
    except OSError as error:
      if error.errno not in _NO_LOCK_SUPPORT:
        raise
      self._acquire_without_kernel_lock()
      return
    self._file_lock = lock
    self.kernel_lock = True
    self._owner = LockOwner.this_process()
    self._write_owner(self._owner)

  def release(self) -> None:
    """Releases the lock and removes LOCK.owner (a no-op when not held)."""
    if not self.held:
      return
    if self._lease_stop is not None:
      self._lease_stop.set()
      self._lease_stop = None
      _LEASES_HELD_HERE.discard(os.fspath(self.workdir))
    try:
      recorded = read_owner(self.workdir)
      if self._file_lock is not None or (recorded and recorded.same_process(self._owner)):
        self.owner_path.unlink(missing_ok=True)  # while still locked
    finally:
      self._owner = None
      if self._file_lock is not None:
        lock, self._file_lock = self._file_lock, None
        lock.release()

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  # -- helpers ---------------------------------------------------------------
  def _write_owner(self, owner: LockOwner) -> None:
    """Replaces the owner record whole (a rename where the filesystem has one)."""
    if _is_local(self.owner_path):
      partial = f"{os.fspath(self.owner_path)}.{os.getpid()}.partial"
      with open(partial, "w") as f:
        f.write(owner.record())
        f.flush()
        os.fsync(f.fileno())
      os.replace(partial, os.fspath(self.owner_path))
    else:
      self.owner_path.write_text(owner.record())

  def _wait_for_owner(self) -> LockOwner | None:
    deadline = time.monotonic() + _OWNER_WAIT_S
    while True:
      owner = read_owner(self.workdir)
      if owner is not None or time.monotonic() > deadline:
        return owner
      time.sleep(0.05)

  def _in_use_message(self, owner: LockOwner | None, *, lease: bool = False) -> str:
    holder = str(owner) if owner else "another process (it has not recorded its host and pid yet)"
    message = (f"workdir {self.workdir} is in use by {holder} (lock file {self.path}); wait for "
               "it to finish, stop it, or pick another --workdir")
    if lease:
      message += (f". This filesystem offers no file locks, so cnnjax relies on the holder's "
                  f"heartbeat in {self.owner_path}: the workdir frees itself {LEASE_S:.0f} s after "
                  f"the last one, or delete that file if the process is gone")
    return message

  def _acquire_without_kernel_lock(self) -> None:
    log.warning("the filesystem of %s offers no file locks (flock): cnnjax falls back to a lease "
                "in %s, which cannot exclude two runs starting at the same instant; start one job "
                "per workdir", self.workdir, self.owner_path)
    self._acquire_lease()

  def _acquire_lease(self) -> None:
    """Fallback without kernel locks: a heartbeat record (see the module docstring)."""
    me = LockOwner.this_process()
    owner = read_owner(self.workdir)
    if owner is not None:
      if owner.same_process(me):  # this process, or a dead one whose pid it reuses
        live = os.fspath(self.workdir) in _LEASES_HELD_HERE
      else:
        live = lease_is_live(owner)
      if live:
        raise WorkdirLockedError(self._in_use_message(owner, lease=True))
      log.warning("taking over %s: its record names %s, whose lease has expired", self.workdir,
                  owner)
      self.owner_path.unlink(missing_ok=True)
    me = dataclasses.replace(me, heartbeat=me.started)
    if _is_local(self.owner_path):
      try:  # exclusive creation: of two runs starting together, one fails here
        fd = os.open(os.fspath(self.owner_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        raise WorkdirLockedError(self._in_use_message(self._wait_for_owner(), lease=True)) from None
      os.close(fd)
    self._write_owner(me)
    self._owner = me
    self.kernel_lock = False
    _LEASES_HELD_HERE.add(os.fspath(self.workdir))
    self._lease_stop = threading.Event()
    threading.Thread(target=self._refresh_lease, args=(self._lease_stop, me), daemon=True,
                     name="cnnjax-workdir-lease").start()

  def _refresh_lease(self, stop: threading.Event, owner: LockOwner) -> None:
    while not stop.wait(LEASE_REFRESH_S):
      try:
        self._write_owner(dataclasses.replace(owner, heartbeat=time.time()))
      except OSError as error:  # a transient storage error must not kill the run
        log.warning("could not refresh the workdir lease %s: %s", self.owner_path, error)


def _share_from_first_process(message: str) -> str:
  """Process 0's `message`, in every process (a collective: every process must call it)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return message
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  encoded = message.encode()[:_MESSAGE_BYTES]
  buffer = np.zeros(_MESSAGE_BYTES + 4, np.uint8)
  buffer[:4] = np.frombuffer(np.asarray(len(encoded), np.uint32).tobytes(), np.uint8)
  buffer[4:4 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  length = int(np.frombuffer(shared[:4].tobytes(), np.uint32)[0])
  return shared[4:4 + length].tobytes().decode(errors="replace")


@contextlib.contextmanager
def acquire_for_run(workdir: epath.PathLike) -> Iterator[WorkdirLock]:
  """The workdir lock of a run, in every process of it; releases it on exit.

  Process 0 takes the lock; every process then learns the outcome, so a
  refusal raises the same WorkdirLockedError (naming the holder) in all of
  them at once instead of leaving the others waiting in their first
  collective. Every process of the run must call this at the same point.
  """
  lock = WorkdirLock(workdir)
  refusal, failure = "", None
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except Exception as error:  # pylint: disable=broad-except  (the others must hear of it too)
      failure = error
      refusal = (str(error) if isinstance(error, WorkdirLockedError) else
                 f"process 0 could not lock {workdir}: {type(error).__name__}: {error}")
  refusal = _share_from_first_process(refusal)
  if failure is not None:
    raise failure
  if refusal:
    raise WorkdirLockedError(refusal)
  try:
    yield lock
  finally:
    lock.release()
