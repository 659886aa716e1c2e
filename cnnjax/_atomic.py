"""Whole-file writes: a reader sees the old content or the new one, never half.

`write_atomic(path, data)` on a local or shared filesystem writes a
temporary file in the same directory, flushes it to the disk (fsync) and
renames it over `path` (os.replace, atomic on POSIX), then syncs the
directory so that the rename itself survives a crash of the machine. On an
object store (any `etils.epath` path with a scheme, e.g. gs://) an object is
written whole or not at all, so it goes through `epath.Path.write_bytes`.

Needs only the standard library and etils.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from etils import epath


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a filesystem (not an object store such as gs://)."""
  return "://" not in os.fspath(path)


def write_atomic(path: epath.PathLike, data: str | bytes) -> None:
  """Replaces `path` with `data` (str: UTF-8) in one step; see the module docstring."""
  payload = data.encode() if isinstance(data, str) else bytes(data)
  if not is_local(path):
    epath.Path(path).write_bytes(payload)
    return
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(partial)
    raise
  sync_directory(directory)


def sync_directory(directory: str) -> None:
  """fsync a directory, so that a rename or a new name in it reaches the disk."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return  # not every filesystem lets a directory be opened
  try:
    os.fsync(fd)
  except OSError:
    pass  # some filesystems refuse fsync on a directory; the rename still happened
  finally:
    os.close(fd)
