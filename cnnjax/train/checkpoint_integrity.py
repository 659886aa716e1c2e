"""Checkpoint manifests: sizes and checksums written at save, verified before restore.

Orbax makes a save atomic (it writes `<step>.orbax-checkpoint-tmp-*` and
renames it to `<step>` once complete), which protects against a process
killed mid-save. It does not protect against what happens to the files
afterwards: a node that crashes before the page cache reaches the disk, a
partial copy or rsync of a workdir, a file deleted by a clean-up script, a
bad disk. Restoring such a checkpoint ends in an error deep inside
TensorStore, or worse, a half-restored state.

So every checkpoint directory gets `cnnjax_manifest.json`: the size and
SHA-256 of every file its items wrote, computed once the items are complete
and before orbax commits the directory (so the manifest is part of the atomic
save). `find_problem(step_dir)` re-reads the files and names the first ones
that are missing, truncated or changed. Orbax's own bookkeeping files at the
top of the directory and its commit markers are rewritten after the items
and are not covered.

Paths go through `etils.epath`, so a workdir on an object store
(`gs://bucket/run`) is checked like a local one. Needs only the standard
library and etils.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import time
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from cnnjax.errors import CheckpointError

MANIFEST_FILE = "cnnjax_manifest.json"
MANIFEST_VERSION = 1
# Written by orbax after the items are complete (commit markers, step metadata).
UNCOVERED_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
# How orbax names a step directory that is still being written.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"
_CHUNK = 1 << 22
_MAX_REPORTED = 3


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _size(path: epath.Path) -> int:
  return int(path.stat().length)


def _files_under(directory: epath.Path) -> list[epath.Path]:
  """Every file below `directory`, in a stable order (no os.walk: object stores too)."""
  found = []
  for entry in sorted(directory.iterdir(), key=lambda p: p.name):
    if entry.is_dir():
      found.extend(_files_under(entry))
    else:
      found.append(entry)
  return found


def covered_files(step_dir: epath.PathLike) -> list[str]:
  """Relative paths of the files a manifest covers: everything inside the item folders."""
  step_dir = epath.Path(step_dir)
  found = []
  for item_dir in sorted(step_dir.iterdir(), key=lambda p: p.name):
    if not item_dir.is_dir():
      continue  # orbax's top-level bookkeeping and our manifest
    for path in _files_under(item_dir):
      if path.name not in UNCOVERED_FILES:
        found.append(os.fspath(path.relative_to(step_dir)))
  return found


def compute_manifest(step_dir: epath.PathLike) -> dict[str, Any]:
  step_dir = epath.Path(step_dir)
  files = {}
  for relative in covered_files(step_dir):
    path = step_dir / relative
    files[relative] = {"size": _size(path), "sha256": _sha256(path)}
  return {"version": MANIFEST_VERSION, "created": time.time(), "files": files}


def write_manifest(step_dir: epath.PathLike) -> None:
  """Writes the manifest of a complete step directory, whole (a rename where there is one)."""
  step_dir = epath.Path(step_dir)
  text = json.dumps(compute_manifest(step_dir), indent=1, sort_keys=True)
  path = step_dir / MANIFEST_FILE
  if _is_local(path):
    partial = os.fspath(path) + ".partial"
    with open(partial, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, os.fspath(path))
  else:  # object stores write an object whole or not at all
    path.write_text(text)


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def has_manifest(step_dir: epath.PathLike) -> bool:
  return (epath.Path(step_dir) / MANIFEST_FILE).is_file()


def find_problem(step_dir: epath.PathLike, *, required_items: tuple[str, ...] = ()) -> str | None:
  """What is wrong with a step directory, in words; None when it is intact.

  A directory without a manifest (written before manifests existed) is only
  checked for its required item folders.
  """
  step_dir = epath.Path(step_dir)
  if not step_dir.is_dir():
    return f"{step_dir} does not exist"
  missing_items = [item for item in required_items if not (step_dir / item).is_dir()]
  if missing_items:
    return f"item folder(s) {missing_items} missing"
  manifest_path = step_dir / MANIFEST_FILE
  if not manifest_path.exists():
    return None
  try:
    manifest = json.loads(manifest_path.read_text())
    expected = dict(manifest["files"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    return f"its manifest {MANIFEST_FILE} is unreadable ({type(error).__name__}: {error})"
  problems = []
  for relative, want in sorted(expected.items()):
    path = step_dir / relative
    try:
      size = _size(path)
    except OSError:
      problems.append(f"{relative} is missing")
      continue
    if size != want["size"]:
      problems.append(f"{relative} has {size} bytes, {want['size']} when saved"
                      + (" (truncated)" if size < want["size"] else ""))
    elif _sha256(path) != want["sha256"]:
      problems.append(f"{relative} changed since it was saved (checksum mismatch)")
    if len(problems) >= _MAX_REPORTED:
      break
  if not problems:
    return None
  more = len(problems) >= _MAX_REPORTED
  return "; ".join(problems) + (" (and possibly more)" if more else "")


def unfinished_step_dir(root: epath.PathLike, step: int) -> str | None:
  """The directory a save of `step` is writing into, before or after orbax's rename.

  The newest `<step>.orbax-checkpoint-tmp-*` without a manifest, else
  `<step>` itself if it has none yet; None when neither exists.
  """
  root = epath.Path(root)
  candidates = [c for c in root.glob(f"{step}{ORBAX_TMP_MARKER}*")
                if c.is_dir() and not has_manifest(c)]
  if candidates:
    return os.fspath(max(candidates, key=lambda c: c.stat().mtime))
  final = root / str(step)
  if final.is_dir() and not has_manifest(final):
    return os.fspath(final)
  return None


def quarantine(step_dir: epath.PathLike, destination_root: epath.PathLike) -> str:
  """Moves a damaged step directory out of the manager's sight; returns its new path."""
  step_dir = epath.Path(step_dir)
  destination_root = epath.Path(destination_root)
  destination_root.mkdir(parents=True, exist_ok=True)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  base = f"{step_dir.parent.name}-{step_dir.name}-{stamp}"
  target = destination_root / base
  suffix = 0
  while target.exists():
    suffix += 1
    target = destination_root / f"{base}-{suffix}"
  step_dir.rename(target)
  return os.fspath(target)


# ------------------------------------------- the manifest commits with orbax


def _orbax_version() -> str:
  return getattr(ocp, "__version__", "unknown")


def _default_temporary_path_class(directory: epath.Path):
  """The TemporaryPath class orbax itself picks for `directory` (rename or commit file)."""
  try:
    from orbax.checkpoint._src.path import atomicity_defaults  # pylint: disable=g-import-not-at-top
    return atomicity_defaults.get_default_temporary_path_class(directory)
  except (ImportError, AttributeError):
    pass
  try:
    from orbax.checkpoint.path import atomicity  # pylint: disable=g-import-not-at-top
    object_store = os.fspath(directory).startswith("gs://")
    return (atomicity.CommitFileTemporaryPath if object_store
            else atomicity.AtomicRenameTemporaryPath)
  except (ImportError, AttributeError) as error:
    raise CheckpointError(
        f"orbax-checkpoint {_orbax_version()} has neither atomicity_defaults."
        "get_default_temporary_path_class nor atomicity.AtomicRenameTemporaryPath, which "
        "cnnjax extends to write checkpoint manifests: install the orbax-checkpoint version "
        "pyproject.toml asks for") from error


def manifested_temporary_path_class(directory: epath.PathLike):
  """orbax's own commit for `directory`, with cnnjax_manifest.json written just before it.

  The manifest (size + SHA-256 of every item file, see checkpoint_integrity)
  thus commits atomically with the checkpoint. orbax releases differ in
  whether `TemporaryPath.finalize` is a coroutine; the override follows the
  base class, and refuses a shape it does not know instead of never committing.
  """
  base = _default_temporary_path_class(epath.Path(directory))
  finalize = getattr(base, "finalize", None)
  if inspect.iscoroutinefunction(finalize):
    class ManifestedTemporaryPath(base):  # pylint: disable=missing-class-docstring
      async def finalize(self, *args, **kwargs):
        await asyncio.to_thread(write_manifest, self.get())
        return await super().finalize(*args, **kwargs)
  elif callable(finalize) and not inspect.isasyncgenfunction(finalize):
    class ManifestedTemporaryPath(base):  # pylint: disable=missing-class-docstring,function-redefined
      def finalize(self, *args, **kwargs):
        write_manifest(self.get())
        return super().finalize(*args, **kwargs)
  else:
    raise CheckpointError(
        f"orbax-checkpoint {_orbax_version()}: {base.__name__}.finalize is {finalize!r}, not a "
        "method cnnjax can extend to write checkpoint manifests; install the orbax-checkpoint "
        "version pyproject.toml asks for")
  ManifestedTemporaryPath.__name__ = f"Manifested{base.__name__}"
  return ManifestedTemporaryPath
