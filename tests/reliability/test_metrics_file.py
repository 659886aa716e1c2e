"""metrics.jsonl survives kills and resumes: appended only, read back as one row per (split, step)."""

from __future__ import annotations

import json
import os

import pytest

from cnnjax.train.writer import METRICS_FILE, MetricWriter, read_metrics


def test_a_torn_last_row_is_skipped_and_the_next_run_appends_cleanly(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(1, "train", {"loss": 2.0})
  writer.write(2, "train", {"loss": 1.5})
  writer.close()
  path = tmp_path / METRICS_FILE
  with open(path, "a") as f:  # a kill in the middle of writing step 3's row
    f.write(json.dumps({"step": 3, "split": "train", "loss": 1.2})[:17])

  with pytest.warns(UserWarning, match=f"{METRICS_FILE}:3 is not a complete JSON row"):
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]

  resumed = MetricWriter(str(tmp_path), tensorboard=False)  # the restarted run
  resumed.write(3, "train", {"loss": 1.2})
  resumed.close()
  with pytest.warns(UserWarning, match=":3 is not"):
    rows = read_metrics(str(tmp_path), "train")
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5), (3, 1.2)]


def _rows(path):
  return [json.loads(line) for line in open(path) if line.strip()]


def test_a_resumed_run_keeps_one_row_per_split_and_step_and_loses_none(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  for step in (1, 2, 3, 4, 5):
    writer.write(step, "train", {"loss": 10.0 - step})
  writer.write(3, "val", {"loss": 7.5})
  writer.write(5, "val", {"loss": 5.5})
  writer.close()
  path = tmp_path / METRICS_FILE
  before = path.read_text()
  with open(path, "a") as f:  # killed while writing step 6's row
    f.write('{"step": 6, "spl')

  # The checkpoint of step 3 survived: rows 4-6 are recomputed by the resumed run.
  resumed = MetricWriter(str(tmp_path), tensorboard=False, resume_step=3)
  resumed.write(3, "val", {"loss": 7.25})  # a re-evaluation of the restored step
  for step in (4, 5, 6):
    resumed.write(step, "train", {"loss": 20.0 - step})
  resumed.close()
  assert path.read_text().startswith(before)  # appended only: nothing written is lost
  with pytest.warns(UserWarning, match="not a complete JSON row"):
    rows = read_metrics(str(tmp_path))
  assert [(r["split"], r["step"], r["loss"]) for r in rows] == [
      ("train", 1, 9.0), ("train", 2, 8.0), ("train", 3, 7.0), ("val", 3, 7.25),
      ("train", 4, 16.0), ("train", 5, 15.0), ("train", 6, 14.0)]  # no stale val row of step 5


def test_a_fresh_start_supersedes_rows_of_a_run_that_left_no_checkpoint(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(1, "train", {"loss": 2.0})
  writer.close()
  MetricWriter(str(tmp_path), tensorboard=False, resume_step=0).close()
  assert read_metrics(str(tmp_path)) == []
  assert _rows(tmp_path / METRICS_FILE)[0]["step"] == 1  # still in the file


def test_the_last_of_repeated_rows_wins_without_any_resume(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  writer.write(4, "val", {"loss": 1.0})
  writer.write(4, "val", {"loss": 0.5})
  writer.write(4, "train", {"loss": 2.0})
  writer.close()
  assert [(r["split"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
      ("val", 0.5), ("train", 2.0)]
  assert [r["loss"] for r in read_metrics(str(tmp_path), "val")] == [0.5]


def _events(directory):
  """(step, kind) of every event in the TensorBoard files of `directory`."""
  import glob
  import struct
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    data, offset = open(path, "rb").read(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      events.append((event.step, event.WhichOneof("what")))
  return events


def test_a_resumed_run_tells_tensorboard_to_hide_the_recomputed_steps(tmp_path):
  pytest.importorskip("tensorboardX")
  MetricWriter(str(tmp_path / "fresh")).close()
  assert all(kind != "session_log" for _, kind in _events(tmp_path / "fresh" / "tensorboard"))
  resumed = MetricWriter(str(tmp_path / "resumed"), resume_step=3)
  resumed.write(4, "train", {"loss": 1.0})
  resumed.close()
  # A SessionLog START at step 4: TensorBoard purges older events from step 4 on.
  assert (4, "session_log") in _events(tmp_path / "resumed" / "tensorboard")
