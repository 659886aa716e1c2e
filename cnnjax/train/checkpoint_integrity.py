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

Needs only the standard library.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from typing import Any

MANIFEST_FILE = "cnnjax_manifest.json"
MANIFEST_VERSION = 1
# Written by orbax after the items are complete (commit markers, step metadata).
UNCOVERED_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
# How orbax names a step directory that is still being written.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"
_CHUNK = 1 << 22
_MAX_REPORTED = 3


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def covered_files(step_dir: str) -> list[str]:
  """Relative paths of the files a manifest covers: everything inside the item folders."""
  found = []
  for entry in sorted(os.listdir(step_dir)):
    item_dir = os.path.join(step_dir, entry)
    if not os.path.isdir(item_dir):
      continue  # orbax's top-level bookkeeping and our manifest
    for root, dirs, files in os.walk(item_dir):
      dirs.sort()
      for name in sorted(files):
        if name not in UNCOVERED_FILES:
          found.append(os.path.relpath(os.path.join(root, name), step_dir))
  return found


def compute_manifest(step_dir: str) -> dict[str, Any]:
  files = {}
  for relative in covered_files(step_dir):
    path = os.path.join(step_dir, relative)
    files[relative] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  return {"version": MANIFEST_VERSION, "created": time.time(), "files": files}


def write_manifest(step_dir: str) -> None:
  """Writes the manifest of a complete step directory, atomically and durably."""
  manifest = compute_manifest(step_dir)
  path = os.path.join(step_dir, MANIFEST_FILE)
  partial = path + ".partial"
  with open(partial, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)


def has_manifest(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, MANIFEST_FILE))


def find_problem(step_dir: str, *, required_items: tuple[str, ...] = ()) -> str | None:
  """What is wrong with a step directory, in words; None when it is intact.

  A directory without a manifest (written before manifests existed) is only
  checked for its required item folders.
  """
  if not os.path.isdir(step_dir):
    return f"{step_dir} does not exist"
  missing_items = [item for item in required_items
                   if not os.path.isdir(os.path.join(step_dir, item))]
  if missing_items:
    return f"item folder(s) {missing_items} missing"
  manifest_path = os.path.join(step_dir, MANIFEST_FILE)
  if not os.path.exists(manifest_path):
    return None
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
    expected = dict(manifest["files"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    return f"its manifest {MANIFEST_FILE} is unreadable ({type(error).__name__}: {error})"
  problems = []
  for relative, want in sorted(expected.items()):
    path = os.path.join(step_dir, relative)
    try:
      size = os.path.getsize(path)
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


def unfinished_step_dir(root: str, step: int) -> str | None:
  """The directory a save of `step` is writing into, before or after orbax's rename.

  The newest `<step>.orbax-checkpoint-tmp-*` without a manifest, else
  `<step>` itself if it has none yet; None when neither exists.
  """
  candidates = glob.glob(os.path.join(glob.escape(root), f"{step}{ORBAX_TMP_MARKER}*"))
  candidates = [c for c in candidates if os.path.isdir(c) and not has_manifest(c)]
  if candidates:
    return max(candidates, key=os.path.getmtime)
  final = os.path.join(root, str(step))
  if os.path.isdir(final) and not has_manifest(final):
    return final
  return None


def quarantine(step_dir: str, destination_root: str) -> str:
  """Moves a damaged step directory out of the manager's sight; returns its new path."""
  os.makedirs(destination_root, exist_ok=True)
  parent = os.path.basename(os.path.dirname(os.path.abspath(step_dir)))
  stamp = time.strftime("%Y%m%d-%H%M%S")
  target = os.path.join(destination_root, f"{parent}-{os.path.basename(step_dir)}-{stamp}")
  suffix = 0
  while os.path.exists(target + (f"-{suffix}" if suffix else "")):
    suffix += 1
  target += f"-{suffix}" if suffix else ""
  shutil.move(step_dir, target)
  return target
