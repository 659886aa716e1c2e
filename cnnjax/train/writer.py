"""Metric output of a run: `metrics.jsonl` and TensorBoard events in the workdir.

One JSON object per line, per logged training window and per evaluation:
{"step", "split", "loss", "top1_error", "top5_error", "learning_rate",
"images_per_sec", "epoch", "time", ...}. `split` is "train", or the
validation split's name ("val", "val_ema" for the averaged parameters).
The same scalars go to TensorBoard under "<split>/<name>" (events in
<workdir>/tensorboard). Only process 0 writes.

A run that resumes from the checkpoint of step S (S = 0: no checkpoint yet)
recomputes the rows after S (and may re-evaluate at S). So that the file
still holds one row per (split, step), the writer of a resumed run moves the
rows after S, and a row cut short by a kill, to metrics.superseded.jsonl
(nothing is deleted), and does not write again a row for a (split, step) the
file already holds; its TensorBoard writer purges the events after S.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUPERSEDED_FILE = "metrics.superseded.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str, split: str | None = None) -> list[dict[str, Any]]:
  """The rows of a workdir's metrics.jsonl (optionally of one split)."""
  path = os.path.join(workdir, METRICS_FILE)
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for number, line in enumerate(f, start=1):
        line = line.strip()
        if not line:
          continue
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          # A row cut short by a kill mid-write: the rest of the file is intact.
          warnings.warn(f"{path}:{number} is not a complete JSON row (a run killed while "
                        f"writing it?); skipping that line.", stacklevel=2)
  return [r for r in rows if split is None or r.get("split") == split]


class MetricWriter:
  """Appends rows to metrics.jsonl and TensorBoard; a no-op when disabled.

  resume_step: the step the run starts from, the restored checkpoint's or 0
  (see the module docstring); None appends to the file as it is.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._held: set[tuple[str, int]] = set()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if resume_step is not None and os.path.exists(path):
      self._held = _supersede_rows_after(workdir, resume_step)
    torn = False
    if os.path.exists(path) and os.path.getsize(path) > 0:
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    self._jsonl = open(path, "a", buffering=1)
    if torn:  # a row cut short by a kill: start the next one on its own line
      self._jsonl.write("\n")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        # purge_step: TensorBoard hides the earlier events from the resumed step on.
        self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
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
    if self.enabled and (split, int(step)) not in self._held:
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


def _supersede_rows_after(workdir: str, step: int) -> set[tuple[str, int]]:
  """Moves rows after `step` (and torn rows) to SUPERSEDED_FILE; returns the kept (split, step)s.

  The kept rows are written to a temporary file that replaces metrics.jsonl
  in one rename, after the moved rows are safely appended to the other file,
  so a kill at any point leaves every row in at least one of the two files.
  """
  path = os.path.join(workdir, METRICS_FILE)
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  kept, moved, held = [], [], set()
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      row_step = int(row["step"])
    except (ValueError, KeyError, TypeError):
      moved.append(line)  # cut short by a kill
      continue
    if row_step > step:
      moved.append(line)
    else:
      kept.append(line)
      held.add((row.get("split"), row_step))
  if moved:
    with open(os.path.join(workdir, SUPERSEDED_FILE), "ab") as f:
      f.write(b"".join(line + b"\n" for line in moved))
      f.flush()
      os.fsync(f.fileno())
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
      f.write(b"".join(line + b"\n" for line in kept))
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  return held
