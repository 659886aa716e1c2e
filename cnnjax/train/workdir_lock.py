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
filelock is told not to fall back to its own marker-file lock where flock is
missing (filelock >= 3.30 would otherwise, and report nothing), so such a
filesystem always gets this lease, and says so.

One owner, always: on a filesystem the record changes hands only by
compare-and-swap. A new record is published with a hard link (which fails
if a record exists); taking over an expired record first renames it away to
a name only this process uses, so of two processes doing it at once exactly
one gets it, and compares what it got with what it judged expired (a record
that is not goes back where it was). The holder never rewrites the record:
it reads it before every refresh and writes its heartbeat to a file named
after its lease. A holder thus finds out, at its next refresh, that it was
stalled (SIGSTOP, a frozen VM) past LEASE_S and taken over, and cannot
overwrite the new holder's record. The run calls
`WorkdirLock.check()` at every step: it raises WorkdirLeaseLostError once the
lease is lost, and re-reads the record itself whenever the last
confirmation is older than CONFIRM_EVERY_S, so a holder that wakes up from
a stall stops at its next step boundary, before it writes anything. On an
object store (no rename, no link) the same protocol is best effort: the
record is re-read after it is written; a warning says so at start-up, and
making sure that one job at a time writes such a workdir is then the
launcher's job (one Kubernetes Job / SLURM job per workdir).

Needs the standard library, filelock and etils; jax only in acquire_for_run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import filelock
from etils import epath

from cnnjax._atomic import is_local as _is_local
from cnnjax._atomic import sync_directory, write_atomic
from cnnjax.errors import WorkdirLockedError

LOCK_FILE = "LOCK"
OWNER_FILE = "LOCK.owner"
# Without kernel locks: the holder refreshes its record this often, and a record
# whose heartbeat is older than LEASE_S belongs to a holder that is gone.
LEASE_REFRESH_S = 30.0
LEASE_S = 300.0
# `check()` re-reads the record itself when the holder last confirmed it longer
# ago than this (a stall: the refresh thread did not run either). Below
# LEASE_S, so no one can have taken over in between (clocks agreeing to
# within LEASE_S - CONFIRM_EVERY_S).
CONFIRM_EVERY_S = 150.0
# A record briefly absent (another process's compare-and-swap under way) is
# looked for again this long before a holder concludes it was taken.
_ABSENT_GRACE_S = 1.0
# flock failures that mean "this filesystem has no locks", not "someone holds it".
_NO_LOCK_SUPPORT = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# The winner of a race writes its record right after locking; a loser waits this
# long for that record so that its error message can say who won.
_OWNER_WAIT_S = 1.0
# Longest refusal message shared between processes (bytes of UTF-8).
_MESSAGE_BYTES = 4096

log = logging.getLogger(__name__)


class WorkdirLeaseLostError(WorkdirLockedError):
  """This process held a workdir's lease and another process has taken it over."""

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
  token: str = ""  # a lease's own name (no kernel lock): tells two holdings apart

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
    token = f" {self.token}" if self.token else ""
    return f"{self.host} {self.pid} {self.started:.3f} {self.heartbeat:.3f}{token}\n"


def parse_owner(text: str) -> LockOwner | None:
  parts = text.split()
  if len(parts) < 2 or not parts[1].isdigit():
    return None
  try:
    numbers = [float(p) for p in parts[2:4]]
  except ValueError:
    return None
  token = parts[4] if len(parts) > 4 and parts[4].isalnum() else ""
  return LockOwner(parts[0], int(parts[1]), *numbers, token=token)


def _heartbeat_path(workdir: epath.Path, token: str) -> epath.Path:
  """Where the holder of the lease `token` writes its heartbeat (it alone writes it)."""
  return workdir / f"{OWNER_FILE}.{token}.heartbeat"


def _with_heartbeat(workdir: epath.Path, owner: LockOwner | None) -> LockOwner | None:
  """`owner` with the newer of its recorded heartbeat and its heartbeat file's."""
  if owner is None or not owner.token:
    return owner
  text = _read_record(_heartbeat_path(workdir, owner.token))
  try:
    beat = float(text) if text else 0.0
  except ValueError:
    beat = 0.0
  return dataclasses.replace(owner, heartbeat=max(owner.heartbeat, beat))


def _read_record(path: epath.Path) -> str | None:
  """The text of an owner record; None when there is none (or it cannot be read)."""
  try:
    return path.read_text()[:300]
  except (OSError, UnicodeDecodeError):
    return None


def read_owner(workdir: epath.PathLike) -> LockOwner | None:
  """The owner recorded in a workdir's LOCK.owner, or None if missing, empty or garbled."""
  workdir = epath.Path(workdir)
  text = _read_record(workdir / OWNER_FILE)
  return _with_heartbeat(workdir, parse_owner(text) if text is not None else None)


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


def _file_lock(path: str) -> filelock.BaseFileLock:
  """filelock's FileLock, told not to replace a missing flock by its own marker file."""
  if "fallback_to_soft" in inspect.signature(filelock.FileLock.__init__).parameters:
    return filelock.FileLock(path, timeout=0, fallback_to_soft=False)
  return filelock.FileLock(path, timeout=0)  # filelock < 3.30 raises NotImplementedError


def _soft_fallback(lock: filelock.BaseFileLock) -> bool:
  """Whether filelock holds `lock` with its marker-file fallback instead of flock."""
  context = getattr(lock, "_context", None)
  return bool(getattr(context, "soft_fallback", False))


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
    # The lease (no kernel lock): the record this process last wrote, when it last
    # confirmed it was still its own, and who took it over (once lost).
    self._record_text: str | None = None
    self._confirmed = 0.0
    self._lost_to: LockOwner | None = None
    self._lost = False
    self._lease_mutex = threading.Lock()

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
    lock = _file_lock(os.fspath(self.path))
    try:
      lock.acquire()
    except filelock.Timeout:
      raise WorkdirLockedError(self._in_use_message(self._wait_for_owner())) from None
    except NotImplementedError:  # filelock < 3.30 on a filesystem without flock
      self._acquire_without_kernel_lock()
      return
    except OSError as error:
      if error.errno not in _NO_LOCK_SUPPORT:
        raise
      self._acquire_without_kernel_lock()
      return
    if _soft_fallback(lock):  # a filelock that fell back anyway: not a kernel lock
      lock.release()
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
      if self._file_lock is not None:
        self.owner_path.unlink(missing_ok=True)  # while still locked
      elif not self._lost:
        with self._lease_mutex:
          self._remove_own_record()
    finally:
      self._owner = None
      self._record_text, self._lost, self._lost_to = None, False, None
      if self._file_lock is not None:
        lock, self._file_lock = self._file_lock, None
        lock.release()

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def check(self) -> None:
    """WorkdirLeaseLostError if this lease was taken over; cheap unless long unconfirmed.

    The run calls it at every step, before anything of the step is written. A
    kernel lock cannot be lost: nothing to check.
    """
    if self._file_lock is not None or not self.held:
      return
    if not self._lost and time.time() - self._confirmed > CONFIRM_EVERY_S:
      self._refresh()  # stalled: the refresh thread did not confirm it either
    if self._lost:
      holder = str(self._lost_to) if self._lost_to else "another process"
      raise WorkdirLeaseLostError(
          f"the lease on workdir {self.workdir} was taken over by {holder} while this process "
          f"({self._owner}) did not refresh it for more than {LEASE_S:.0f} s (stopped or frozen?)"
          f"; this run stops without writing anything more. The other run now owns "
          f"{self.workdir}: let it finish, or stop it and resume here")

  # -- helpers ---------------------------------------------------------------
  def _write_owner(self, owner: LockOwner) -> None:
    """Replaces the owner record whole (a rename where the filesystem has one)."""
    write_atomic(self.owner_path, owner.record())

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
                "in %s (taken and renewed by compare-and-swap); start one job per workdir",
                self.workdir, self.owner_path)
    self._acquire_lease()

  # The lease's compare-and-swap on a filesystem (see the module docstring).
  def _private_name(self, kind: str) -> str:
    return (f"{os.fspath(self.owner_path)}.{kind}.{socket.gethostname()}.{os.getpid()}."
            f"{secrets.token_hex(4)}")

  def _publish(self, text: str) -> bool:
    """Creates the record with `text` unless one exists (then False); whole, never half."""
    target = os.fspath(self.owner_path)
    staged = self._private_name("new")
    with open(staged, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.link(staged, target)  # fails if a record exists, atomically
    except FileExistsError:
      return False
    except OSError as error:  # no hard links here (some FUSE mounts): exclusive creation
      if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                             errno.EXDEV, errno.ENOSYS):
        raise
      try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    finally:
      os.unlink(staged)
    sync_directory(os.fspath(self.workdir))
    return True

  def _claim(self, expected: str) -> tuple[bool, str | None]:
    """Moves the record away if it reads `expected`: (claimed, the text found instead)."""
    target = os.fspath(self.owner_path)
    claimed = self._private_name("claim")
    try:
      os.rename(target, claimed)  # of two processes renaming it, one gets it
    except FileNotFoundError:
      return False, None
    with open(claimed) as f:
      found = f.read()
    if found == expected:
      os.unlink(claimed)
      return True, found
    try:  # not the record we judged: put it back where it was
      os.link(claimed, target)
    except OSError:
      pass  # a third process published meanwhile; the one we moved has lost it anyway
    os.unlink(claimed)
    return False, found

  def _remove_own_record(self) -> None:
    if self._record_text is None:
      return
    if _is_local(self.owner_path):
      self._claim(self._record_text)
    elif _read_record(self.owner_path) == self._record_text:
      self.owner_path.unlink(missing_ok=True)
    _heartbeat_path(self.workdir, self._owner.token).unlink(missing_ok=True)

  def _acquire_lease(self) -> None:
    """Fallback without kernel locks: a heartbeat record (see the module docstring)."""
    me = LockOwner.this_process()
    me = dataclasses.replace(me, heartbeat=me.started, token=secrets.token_hex(8))
    text = me.record()
    current = _read_record(self.owner_path)
    if current is not None and not current.strip():
      self._wait_for_owner()  # being written (exclusive creation without hard links)
      current = _read_record(self.owner_path)
    owner = _with_heartbeat(self.workdir, parse_owner(current) if current is not None else None)
    if owner is not None:
      if owner.same_process(me):  # this process, or a dead one whose pid it reuses
        live = os.fspath(self.workdir) in _LEASES_HELD_HERE
      else:
        live = lease_is_live(owner)
      if live:
        raise WorkdirLockedError(self._in_use_message(owner, lease=True))
      log.warning("taking over %s: its record names %s, whose lease has expired", self.workdir,
                  owner)
    if _is_local(self.owner_path):
      if current is not None:
        claimed, found = self._claim(current)
        if not claimed:
          taker = parse_owner(found) if found else self._wait_for_owner()
          raise WorkdirLockedError(self._in_use_message(taker, lease=True))
      if not self._publish(text):
        raise WorkdirLockedError(self._in_use_message(self._wait_for_owner(), lease=True))
    else:  # an object store: last writer wins; read back to find out who did
      self.owner_path.write_text(text)
      time.sleep(_OWNER_WAIT_S)
      if _read_record(self.owner_path) != text:
        raise WorkdirLockedError(self._in_use_message(read_owner(self.workdir), lease=True))
    if owner is not None and owner.token:
      _heartbeat_path(self.workdir, owner.token).unlink(missing_ok=True)
    self._record_text = text
    self._confirmed = me.heartbeat
    self._owner = me
    self.kernel_lock = False
    _LEASES_HELD_HERE.add(os.fspath(self.workdir))
    self._lease_stop = threading.Event()
    threading.Thread(target=self._refresh_lease, args=(self._lease_stop,), daemon=True,
                     name="cnnjax-workdir-lease").start()

  def _refresh(self) -> None:
    """Renews the heartbeat if the record is still this lease's; else marks the lease lost.

    The record itself is never rewritten, so a holder that was stalled
    between reading it and writing cannot overwrite a new holder's; its
    heartbeat goes to a file of its own. `_confirmed` is the heartbeat
    written after the record was last seen to be this lease's: until
    LEASE_S after it no one can take the workdir over.
    """
    with self._lease_mutex:
      if self._lost or self._record_text is None:
        return
      found = _read_record(self.owner_path)
      deadline = time.monotonic() + _ABSENT_GRACE_S
      while found is None and time.monotonic() < deadline:  # a takeover under way?
        time.sleep(0.05)
        found = _read_record(self.owner_path)
      if found == self._record_text:
        beat = time.time()
        write_atomic(_heartbeat_path(self.workdir, self._owner.token), f"{beat:.3f}\n")
        self._confirmed = beat
        return
      self._lost = True
      self._lost_to = parse_owner(found) if found else None
      log.error("the lease on %s was taken over by %s; this run stops at its next step",
                self.workdir, self._lost_to or "another process")

  def _refresh_lease(self, stop: threading.Event) -> None:
    while not stop.wait(LEASE_REFRESH_S):
      try:
        self._refresh()
      except OSError as error:  # a transient storage error must not kill the run
        log.warning("could not refresh the workdir lease %s: %s", self.owner_path, error)
      if self._lost:
        return


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
