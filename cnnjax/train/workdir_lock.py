"""One writer per workdir: an exclusive lock that dies with the process holding it.

Two runs writing the same workdir would interleave checkpoints and metrics
and corrupt both. `WorkdirLock(workdir).acquire()` therefore takes an
exclusive `flock` on `<workdir>/LOCK` and writes "<host> <pid>" into it, so a
second run can say who holds the workdir. The kernel drops the lock when the
holder exits for any reason (normal exit, exception, SIGKILL, OOM killer), so
a LOCK file left behind by a killed run never blocks the restart. No pid
liveness guessing is needed: pids are reused, and in containers a restarted
job often gets the very pid its dead predecessor wrote.

On a filesystem without file locks (flock fails with ENOLCK, EOPNOTSUPP, ...)
the file's content decides instead: a live pid on this host, or any pid on
another host (whose liveness cannot be checked from here), holds the
workdir; the error then says to delete LOCK if that process is gone.

Needs only the standard library.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import socket
import time

from cnnjax.errors import WorkdirLockedError

LOCK_FILE = "LOCK"
# flock failures that mean "this filesystem has no locks", not "someone holds it".
_NO_LOCK_SUPPORT = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# The winner of a race writes its name right after locking; a loser waits this
# long for that name so that its error message can say who won.
_OWNER_WAIT_S = 1.0


@dataclasses.dataclass(frozen=True)
class LockOwner:
  """Who holds a workdir, as written in its LOCK file."""
  host: str
  pid: int

  def __str__(self) -> str:
    return f"process {self.pid} on host {self.host}"

  @classmethod
  def this_process(cls) -> LockOwner:
    return cls(socket.gethostname(), os.getpid())


def parse_owner(text: str) -> LockOwner | None:
  parts = text.split()
  if len(parts) != 2 or not parts[1].isdigit():
    return None
  return LockOwner(parts[0], int(parts[1]))


def read_owner(path: str) -> LockOwner | None:
  """The owner written in a LOCK file, or None if it is missing, empty or garbled."""
  try:
    with open(path) as f:
      return parse_owner(f.read(200))
  except OSError:
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


class WorkdirLock:
  """An exclusive, crash-safe lock on a workdir (see the module docstring).

    lock = WorkdirLock(workdir)
    lock.acquire()        # WorkdirLockedError naming the holder if in use
    try: ...
    finally: lock.release()

  or `with WorkdirLock(workdir): ...`.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError naming the process that holds it."""
    if self._fd is not None:
      return
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(20):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise WorkdirLockedError(self._in_use_message(self._wait_for_owner())) from None
      except OSError as error:
        if error.errno not in _NO_LOCK_SUPPORT:
          os.close(fd)
          raise
        self._acquire_without_flock(fd)
        return
      # A holder unlinks LOCK on release; if that happened between our open
      # and our flock we hold a lock on a file nobody else will ever look at.
      if not self._is_current_file(fd):
        os.close(fd)
        continue
      self._write_owner(fd)
      self._fd = fd
      return
    raise WorkdirLockedError(
        f"could not lock {self.path}: the file kept being replaced by other processes; "
        "is another run starting on the same --workdir?")

  def release(self) -> None:
    """Releases the lock and removes LOCK (a no-op when not held)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if self._is_current_file(fd):
        os.unlink(self.path)  # while still locked, so no one can take a file about to vanish
    finally:
      try:
        fcntl.flock(fd, fcntl.LOCK_UN)
      except OSError:
        pass  # no lock support: nothing to unlock
      os.close(fd)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  # -- helpers ---------------------------------------------------------------
  def _is_current_file(self, fd: int) -> bool:
    try:
      on_disk = os.stat(self.path)
    except FileNotFoundError:
      return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)

  @staticmethod
  def _write_owner(fd: int) -> None:
    owner = LockOwner.this_process()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{owner.host} {owner.pid}\n".encode(), 0)
    os.fsync(fd)

  def _wait_for_owner(self) -> LockOwner | None:
    deadline = time.monotonic() + _OWNER_WAIT_S
    while True:
      owner = read_owner(self.path)
      if owner is not None or time.monotonic() > deadline:
        return owner
      time.sleep(0.05)

  def _in_use_message(self, owner: LockOwner | None, *, unverifiable: bool = False) -> str:
    holder = str(owner) if owner else "another process (it has not written its host and pid yet)"
    message = (f"workdir {self.workdir} is in use by {holder} (lock file {self.path}); wait for it "
               "to finish, stop it, or pick another --workdir")
    if unverifiable:
      message += (f". This filesystem offers no file locks, so whether that process still runs "
                  f"cannot be checked from {socket.gethostname()}: if it does not, delete {self.path}")
    return message

  def _acquire_without_flock(self, fd: int) -> None:
    """Fallback for filesystems without locks: trust the recorded host and pid."""
    me = LockOwner.this_process()
    owner = read_owner(self.path)
    if owner is not None and owner != me:
      if owner.host != me.host:
        os.close(fd)
        raise WorkdirLockedError(self._in_use_message(owner, unverifiable=True))
      if pid_alive(owner.pid):
        os.close(fd)
        raise WorkdirLockedError(self._in_use_message(owner))
    self._write_owner(fd)
    self._fd = fd
