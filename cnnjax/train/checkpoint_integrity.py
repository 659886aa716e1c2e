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
save). Where orbax commits each item folder on its own (0.12 and later), the
item folder gets one too, covering what the item had written by then.
`verify(step_dir)` re-reads the files and names the first ones that are
missing, truncated or changed. Orbax's own bookkeeping files at the top of
the directory and its commit markers are rewritten after the items and are
not covered; the step metadata orbax parses when it lists a step must still
be JSON.

A checkpoint records in its own JSON metadata that it was written with a
manifest (`declaration()`), so a manifest that later goes missing is damage,
and the item manifests are checked in its place. Only a checkpoint without
any trace of a manifest (written before manifests existed) is accepted
unverified, and the caller warns about it.

Paths go through `etils.epath`, so a workdir on an object store
(`gs://bucket/run`) is checked like a local one. Needs only the standard
library and etils.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
import os
import time
from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from cnnjax._atomic import write_atomic
from cnnjax.errors import CheckpointError

MANIFEST_FILE = "cnnjax_manifest.json"
MANIFEST_VERSION = 1
# Written by orbax after the items are complete (commit markers, step metadata).
UNCOVERED_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
# orbax's step metadata, read (as JSON) by every CheckpointManager that lists the step.
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# The key of a checkpoint's own JSON metadata (its "meta" item) that says a manifest was
# written with it: without one, a missing manifest is damage, not an older format.
DECLARATION_KEY = "integrity_manifest"
# The item orbax writes a step's metrics into.
METRICS_ITEM = "metrics"
# How orbax names a step directory that is still being written.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"
_CHUNK = 1 << 22
_MAX_REPORTED = 3
# A quick check (thorough=False) still hashes files up to this size: JSON metadata,
# metrics, manifests, small arrays; larger ones have their size compared.
QUICK_HASH_BYTES = 1 << 16


def declaration() -> dict[str, Any]:
  """What a checkpoint's JSON metadata records so that its manifest is known to exist."""
  return {DECLARATION_KEY: {"file": MANIFEST_FILE, "version": MANIFEST_VERSION}}


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
  """Writes the manifest of a complete step (or item) directory, whole."""
  step_dir = epath.Path(step_dir)
  text = json.dumps(compute_manifest(step_dir), indent=1, sort_keys=True)
  write_atomic(step_dir / MANIFEST_FILE, text)


def has_manifest(step_dir: epath.PathLike) -> bool:
  return (epath.Path(step_dir) / MANIFEST_FILE).is_file()


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What `verify` found: `problem` in words (None: sound); `unverified`: sound as far as
  can be told, but written before manifests existed, so its data could not be checked."""
  problem: str | None
  unverified: bool = False


def _read_manifest(path: epath.Path) -> dict[str, Any]:
  manifest = json.loads(path.read_text())
  files = manifest["files"]
  if not isinstance(files, dict):
    raise TypeError(f"'files' is a {type(files).__name__}, not a mapping")
  return files


def _check_files(base: epath.Path, expected: dict[str, Any], thorough: bool,
                 prefix: str = "") -> list[str]:
  """Problems of the files a manifest lists (relative to `base`), at most _MAX_REPORTED."""
  problems = []
  for relative, want in sorted(expected.items()):
    path = base / relative
    try:
      size = _size(path)
    except OSError:
      problems.append(f"{prefix}{relative} is missing")
    else:
      if size != want["size"]:
        problems.append(f"{prefix}{relative} has {size} bytes, {want['size']} when saved"
                        + (" (truncated)" if size < want["size"] else ""))
      elif (thorough or size <= QUICK_HASH_BYTES) and _sha256(path) != want["sha256"]:
        problems.append(f"{prefix}{relative} changed since it was saved (checksum mismatch)")
    if len(problems) >= _MAX_REPORTED:
      break
  return problems


def _json_problem(path: epath.Path, what: str) -> str | None:
  """A problem when `path` exists but is not a JSON object (orbax parses it unguarded)."""
  try:
    if not path.exists():
      return None
    value = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    return f"{what} {path.name} is unreadable ({type(error).__name__})"
  return None if isinstance(value, dict) else f"{what} {path.name} is not a JSON object"


def _declared(step_dir: epath.Path) -> bool | None:
  """Whether the step's own JSON metadata records a manifest (None: no readable metadata)."""
  meta_dir = step_dir / "meta"
  if not meta_dir.is_dir():
    return None
  readable = False
  for path in _files_under(meta_dir):
    if path.name in UNCOVERED_FILES or path.name == MANIFEST_FILE:
      continue
    try:
      value = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    readable = True
    if isinstance(value, dict) and DECLARATION_KEY in value:
      return True
  return False if readable else None


def verify(step_dir: epath.PathLike, *, required_items: tuple[str, ...] = (),
           thorough: bool = True) -> Verdict:
  """Checks a committed step directory against its manifest(s).

  thorough=True re-hashes every file; thorough=False compares sizes and
  hashes only the small files (the metadata and metrics orbax parses when it
  lists a step), for the steps a run will not read.

  A step without its manifest is damaged when it says it was written with
  one (its JSON metadata records it, or its item folders have their own
  manifests, which are then verified too); otherwise it predates manifests
  and is accepted as `unverified`.
  """
  step_dir = epath.Path(step_dir)
  if not step_dir.is_dir():
    return Verdict(f"{step_dir} does not exist")
  missing_items = [item for item in required_items if not (step_dir / item).is_dir()]
  if missing_items:
    return Verdict(f"item folder(s) {missing_items} missing")
  problems = []
  metadata_problem = _json_problem(step_dir / STEP_METADATA_FILE, "orbax's step metadata")
  if metadata_problem:
    problems.append(metadata_problem)
  manifest_path = step_dir / MANIFEST_FILE
  unverified = False
  if manifest_path.exists():
    try:
      expected = _read_manifest(manifest_path)
    except (OSError, ValueError, KeyError, TypeError) as error:
      problems.append(f"its manifest {MANIFEST_FILE} is unreadable "
                      f"({type(error).__name__}: {error})")
    else:
      problems.extend(_check_files(step_dir, expected, thorough))
  else:
    item_manifests = 0
    item_problems = []
    for item_dir in sorted(step_dir.iterdir(), key=lambda p: p.name):
      if not item_dir.is_dir() or not (item_dir / MANIFEST_FILE).exists():
        continue
      item_manifests += 1
      try:
        expected = _read_manifest(item_dir / MANIFEST_FILE)
      except (OSError, ValueError, KeyError, TypeError) as error:
        item_problems.append(f"{item_dir.name}/{MANIFEST_FILE} is unreadable "
                             f"({type(error).__name__})")
        continue
      item_problems.extend(_check_files(item_dir, expected, thorough, prefix=item_dir.name + "/"))
    declared = _declared(step_dir)
    if declared or item_manifests:
      problems.append(f"its manifest {MANIFEST_FILE} is missing, but the checkpoint was "
                      "written with one")
    elif declared is None and (step_dir / "meta").is_dir():
      problems.append(f"its manifest {MANIFEST_FILE} is missing and its metadata (meta/) is "
                      "unreadable")
    else:
      unverified = True
    problems.extend(item_problems)
  if not problems:
    return Verdict(None, unverified=unverified)
  more = len(problems) >= _MAX_REPORTED
  return Verdict("; ".join(problems[:_MAX_REPORTED]) + (" (and possibly more)" if more else ""))


def listing_problem(step_dir: epath.PathLike) -> str | None:
  """Why orbax could not list this step (its step metadata or metrics are not JSON); None if it can.

  A CheckpointManager parses these files of every step while it is built.
  """
  step_dir = epath.Path(step_dir)
  problem = _json_problem(step_dir / STEP_METADATA_FILE, "orbax's step metadata")
  metrics_dir = step_dir / METRICS_ITEM
  if problem is None and metrics_dir.is_dir():
    for path in _files_under(metrics_dir):
      if path.name not in UNCOVERED_FILES and path.name != MANIFEST_FILE:
        problem = problem or _json_problem(path, "its metrics file")
  return problem


def find_problem(step_dir: epath.PathLike, *, required_items: tuple[str, ...] = (),
                 thorough: bool = True) -> str | None:
  """What is wrong with a step directory, in words; None when it is sound (see `verify`)."""
  return verify(step_dir, required_items=required_items, thorough=thorough).problem


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
