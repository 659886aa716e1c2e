"""Metric output of a run: `metrics.jsonl` and TensorBoard events in the workdir.

One JSON object per line, per logged training window and per evaluation:
{"step", "split", "loss", "top1_error", "top5_error", "learning_rate",
"images_per_sec", "epoch", "time", ...}. `split` is "train", or the name
of the split evaluated (e.g. "test", "validation", "train[45000:]"), with
"_ema" appended for the averaged parameters.
The same scalars go to TensorBoard under "<split>/<name>" (events in
<workdir>/tensorboard). Only process 0 writes.

A run that resumes from the checkpoint of step S (S = 0: no checkpoint yet)
recomputes the rows after S (and may re-evaluate at S). The file is only
ever appended to: the resumed run first appends a marker row
{"resume_from_step": S}, and `read_metrics` drops the rows after S written
before that marker and keeps, for each (split, step), the row written last.
So the rows read back are one per (split, step), those of the run that
continued; the file keeps every row ever written, for inspection. Its
TensorBoard writer purges the events after S (purge_step).

An object store (a gs:// workdir) has no append: there the rows go to
numbered part files, metrics.parts/00000001.jsonl, ..., each written whole
(at most PART_ROWS rows, rewritten as it grows, at most UPLOAD_EVERY_S
seconds after a row and always at `flush()`, which the loop calls before
every checkpoint). A run starts a new part; `read_metrics` reads
metrics.jsonl and then the parts in order, as one file.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

from etils import epath

from cnnjax._atomic import is_local, write_atomic
from cnnjax._imports import import_without

METRICS_FILE = "metrics.jsonl"
# On an object store: whole-object part files, read back in the order of their numbers.
PARTS_DIR = "metrics.parts"
PART_ROWS = 500
UPLOAD_EVERY_S = 5.0
TENSORBOARD_DIR = "tensorboard"
# The key of the marker row a resumed run appends before its first row.
RESUME_KEY = "resume_from_step"


def _tensorboardx_summary_writer():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch, when installed, only to name a type in its
  annotations: 1.8 s of CPU at the start of every run on a 2-core machine
  (RESULTS.md, "Start-up"). It tolerates torch being absent, so torch is
  marked absent for the duration of the import and then forgotten; a later
  `import torch` loads it as usual.
  """
  return import_without("tensorboardX", blocked="torch").SummaryWriter


def read_metrics(workdir: epath.PathLike, split: str | None = None) -> list[dict[str, Any]]:
  """The rows of a workdir's metrics.jsonl (optionally of one split), one per (split, step).

  Rows superseded by a resume (see the module docstring) are left out; of
  rows written twice for one (split, step), the later one is kept, in the
  place it was written.
  """
  rows: dict[tuple[Any, int], dict[str, Any]] = {}
  for path in metric_files(workdir):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
      line = line.strip()
      if not line:
        continue
      try:
        row = json.loads(line)
        step = int(row[RESUME_KEY] if RESUME_KEY in row else row["step"])
      except (ValueError, KeyError, TypeError):
        # A row cut short by a kill mid-write: the rest of the file is intact.
        warnings.warn(f"{path}:{number} is not a complete JSON row (a run killed while "
                      f"writing it?); skipping that line.", stacklevel=2)
        continue
      if RESUME_KEY in row:
        rows = {key: kept for key, kept in rows.items() if key[1] <= step}
        continue
      key = (row.get("split"), step)
      rows.pop(key, None)  # the later row takes the later place
      rows[key] = row
  return [r for r in rows.values() if split is None or r.get("split") == split]


def _part_number(path: epath.Path) -> int | None:
  stem = path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else ""
  return int(stem) if stem.isdigit() else None


def metric_files(workdir: epath.PathLike) -> list[epath.Path]:
  """The files holding a workdir's rows, in the order they were written."""
  workdir = epath.Path(workdir)
  files = [workdir / METRICS_FILE] if (workdir / METRICS_FILE).exists() else []
  parts = workdir / PARTS_DIR
  if parts.is_dir():
    numbered = [(_part_number(p), p) for p in parts.iterdir()]
    files += [p for number, p in sorted((n, p) for n, p in numbered if n is not None)]
  return files


class _AppendedFile:
  """metrics.jsonl on a filesystem: every row appended and flushed at once."""

  def __init__(self, path: epath.Path):
    torn = False
    if path.exists():
      with path.open("rb") as f:
        content = f.read()
      torn = bool(content) and not content.endswith(b"\n")
    self._file = path.open("a")
    if torn:  # a row cut short by a kill: start the next one on its own line
      self._file.write("\n")

  def write(self, line: str) -> None:
    self._file.write(line)
    self._file.flush()

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class _PartFiles:
  """Rows on an object store: whole-object part files (see the module docstring)."""

  def __init__(self, directory: epath.Path):
    self._directory = directory
    directory.mkdir(parents=True, exist_ok=True)
    numbers = [_part_number(p) for p in directory.iterdir()]
    self._number = max([n for n in numbers if n is not None], default=0) + 1
    self._rows: list[str] = []
    self._uploaded = 0  # rows of the current part already in the store
    self._last_upload = time.monotonic()

  def write(self, line: str) -> None:
    self._rows.append(line)
    if len(self._rows) >= PART_ROWS or time.monotonic() - self._last_upload >= UPLOAD_EVERY_S:
      self.flush()

  def flush(self) -> None:
    if len(self._rows) > self._uploaded:
      write_atomic(self._directory / f"{self._number:08d}.jsonl", "".join(self._rows))
      self._uploaded = len(self._rows)
    self._last_upload = time.monotonic()
    if len(self._rows) >= PART_ROWS:
      self._number, self._rows, self._uploaded = self._number + 1, [], 0

  def close(self) -> None:
    self.flush()


class MetricWriter:
  """Appends rows to metrics.jsonl (or part files) and TensorBoard; a no-op when disabled.

  resume_step: the step the run starts from, the restored checkpoint's or 0
  (see the module docstring); None appends to the file as it is.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    existed = bool(metric_files(workdir))
    if is_local(workdir):
      self._jsonl = _AppendedFile(workdir / METRICS_FILE)
    else:
      self._jsonl = _PartFiles(workdir / PARTS_DIR)
    if resume_step is not None and existed:
      self._jsonl.write(json.dumps({RESUME_KEY: int(resume_step), "time": time.time()}) + "\n")
    if tensorboard:
      try:
        SummaryWriter = _tensorboardx_summary_writer()
        # purge_step: TensorBoard hides the earlier events from the resumed step on.
        self._tb = SummaryWriter(os.fspath(workdir / TENSORBOARD_DIR),
                                 purge_step=None if resume_step is None else resume_step + 1)
      except ImportError:  # tensorboardX is optional for library users
        self._tb = None

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> dict[str, Any]:
    row = {"step": int(step), "split": split, "time": time.time()}
    for key, value in values.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        row[key] = value if math.isfinite(value) else str(value)
      else:
        row[key] = value
    if self.enabled:
      self._jsonl.write(json.dumps(row) + "\n")
      if self._tb is not None:
        for key, value in values.items():
          if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._tb.add_scalar(f"{split}/{key}", value, int(step))
    return row

  def flush(self) -> None:
    if self._jsonl:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
