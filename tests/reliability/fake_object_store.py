"""A stand-in for gs:// in tests: etils.epath's gs backend redirected to a local directory.

etils offers `epath.testing.mock_epath`, but its default backend still talks to the
network; this fixture helper instead maps every gs://<bucket>/<path> to <root>/<bucket>/<path>
through epath's own local backend, so code that goes through `epath.Path` (not
TensorStore, not `open`) runs against a path that says "object store". Like
GCS, it refuses to append to an object or update one in place.
"""

from __future__ import annotations

import contextlib
import os
from unittest import mock

from etils.epath import backend, gpath

PREFIX = "gs://"


class _RedirectedBackend(backend._OsPathBackend):  # pylint: disable=protected-access
  """epath's local backend with gs:// paths rewritten under `root`."""

  def __init__(self, root: str):
    self._root = root

  def _local(self, path) -> str:
    path = os.fspath(path)
    return os.path.join(self._root, path[len(PREFIX):]) if path.startswith(PREFIX) else path

  def _remote(self, path: str) -> str:
    return PREFIX + os.path.relpath(path, self._root) if path.startswith(self._root) else path

  def open(self, path, mode):
    if "a" in mode or "+" in mode:  # objects are written whole: GCS has no append
      raise NotImplementedError(f"{path}: an object store cannot append to or update an object "
                                f"in place (mode {mode!r})")
    return super().open(self._local(path), mode)

  def exists(self, path):
    return super().exists(self._local(path))

  def isdir(self, path):
    return super().isdir(self._local(path))

  def listdir(self, path):
    return super().listdir(self._local(path))

  def glob(self, path):
    return [self._remote(p) for p in super().glob(self._local(path))]

  def walk(self, top, **kwargs):
    for root, dirs, files in super().walk(self._local(top), **kwargs):
      yield self._remote(os.fspath(root)), dirs, files

  def makedirs(self, path, **kwargs):
    return super().makedirs(self._local(path), **kwargs)

  def mkdir(self, path, **kwargs):
    return super().mkdir(self._local(path), **kwargs)

  def remove(self, path):
    return super().remove(self._local(path))

  def rename(self, path, dst):
    return super().rename(self._local(path), self._local(dst))

  def replace(self, path, dst):
    return super().replace(self._local(path), self._local(dst))

  def rmtree(self, path):
    return super().rmtree(self._local(path))

  def copy(self, path, dst, **kwargs):
    return super().copy(self._local(path), self._local(dst), **kwargs)

  def stat(self, path):
    return super().stat(self._local(path))


@contextlib.contextmanager
def fake_gcs(root: str):
  """Within the context, gs://bucket/x is the local directory <root>/bucket/x."""
  os.makedirs(root, exist_ok=True)
  routes = dict(gpath._PREFIX_TO_BACKEND)  # pylint: disable=protected-access
  routes["gs"] = _RedirectedBackend(root)
  # epath prefers TensorFlow's gfile for gs:// whenever TensorFlow is importable.
  with mock.patch.object(gpath, "_PREFIX_TO_BACKEND", routes), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False):
    yield
