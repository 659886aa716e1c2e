"""Workdir files on an object store path (gs://...): manifests, metrics, the lock, config.json.

Runs against `fake_object_store.fake_gcs`, which serves gs:// from a local
directory through etils.epath; orbax's own TensorStore I/O is not faked, so
whole-run checkpoints on gs:// are not covered here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from fake_object_store import fake_gcs

from cnnjax.errors import WorkdirLockedError
from cnnjax.train import checkpoint
from cnnjax.train import checkpoint_integrity as integrity
from cnnjax.train.workdir_lock import LockOwner, WorkdirLock, read_owner
from cnnjax.train import writer as writer_lib
from cnnjax.train.writer import MetricWriter, read_metrics

RUN = "gs://bucket/run"


@pytest.fixture()
def bucket(tmp_path):
  root = str(tmp_path / "bucket_root")
  with fake_gcs(root):
    yield os.path.join(root, "bucket", "run")  # where gs://bucket/run lands locally


def _fake_step(local_run: str, step: int) -> str:
  """A committed-looking step directory with two item files, written locally."""
  step_dir = os.path.join(local_run, checkpoint.LATEST_DIR, str(step))
  for item, data in (("params", b"p" * 1000), ("meta", b"{}")):
    os.makedirs(os.path.join(step_dir, item, "d"), exist_ok=True)
    with open(os.path.join(step_dir, item, "d", "0"), "wb") as f:
      f.write(data)
  return step_dir


def test_manifests_are_written_and_verified_through_epath(bucket):
  local = _fake_step(bucket, 7)
  remote = f"{RUN}/{checkpoint.LATEST_DIR}/7"
  integrity.write_manifest(remote)
  assert os.path.exists(os.path.join(local, integrity.MANIFEST_FILE))
  assert not [n for n in os.listdir(local) if n.endswith(".partial")]  # written whole
  assert integrity.find_problem(remote, required_items=("params",)) is None
  with open(os.path.join(local, "params", "d", "0"), "r+b") as f:
    f.truncate(10)
  assert "truncated" in integrity.find_problem(remote)
  assert checkpoint.has_checkpoint(RUN)
  moved = integrity.quarantine(remote, f"{RUN}/{checkpoint.QUARANTINE_DIR}")
  assert moved.startswith(f"{RUN}/{checkpoint.QUARANTINE_DIR}/checkpoints-7-")
  assert not checkpoint.has_checkpoint(RUN)


def test_metrics_append_and_read_back_on_an_object_store_path(bucket):
  writer = MetricWriter(RUN, tensorboard=False)
  writer.write(1, "train", {"loss": 2.0})
  writer.write(2, "train", {"loss": 1.0})
  writer.close()
  resumed = MetricWriter(RUN, tensorboard=False, resume_step=1)
  resumed.write(2, "train", {"loss": 0.5})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(RUN)] == [(1, 2.0), (2, 0.5)]


def test_a_resume_on_an_object_store_keeps_every_row_of_both_runs(bucket, monkeypatch):
  """No append on the store: each run writes whole part files (small parts here, so that
  they roll over); every row either run wrote is in them, in order, and read back as one."""
  monkeypatch.setattr(writer_lib, "PART_ROWS", 4)
  first = MetricWriter(RUN, tensorboard=False)
  for step in range(1, 11):
    first.write(step, "train", {"loss": 10.0 - step})
    if step % 5 == 0:
      first.write(step, "val", {"loss": 20.0 - step})
  first.close()  # "killed" after its checkpoint of step 6, say: rows 7..10 are recomputed
  second = MetricWriter(RUN, tensorboard=False, resume_step=6)
  for step in range(7, 13):
    second.write(step, "train", {"loss": 100.0 - step})
    if step == 10:
      second.flush()  # what the loop does before a checkpoint: all rows so far are stored
      stored = [json.loads(line) for path in writer_lib.metric_files(RUN)
                for line in path.read_text().splitlines()]
      assert stored[-1]["step"] == 10 and stored[-1]["loss"] == 90.0
  second.close()
  parts = writer_lib.metric_files(RUN)
  assert len(parts) >= 4 and not os.path.exists(os.path.join(bucket, writer_lib.METRICS_FILE))
  written = [json.loads(line) for path in parts for line in path.read_text().splitlines()]
  first_rows = [(r["split"], r["step"]) for r in written[:12]]
  assert first_rows == [(s, n) for n in range(1, 11) for s in (("train", "val") if n % 5 == 0
                                                               else ("train",))]
  assert written[12] == {"resume_from_step": 6, "time": written[12]["time"]}
  assert [r["step"] for r in written[13:]] == list(range(7, 13))
  rows = [(r["split"], r["step"], r["loss"]) for r in read_metrics(RUN)]
  assert rows == ([("train", n, 10.0 - n) for n in range(1, 6)] + [("val", 5, 15.0)]
                  + [("train", 6, 4.0)] + [("train", n, 100.0 - n) for n in range(7, 13)])


def test_config_json_is_read_through_epath(bucket):
  os.makedirs(bucket, exist_ok=True)
  with open(os.path.join(bucket, checkpoint.CONFIG_FILE), "w") as f:
    json.dump({"model": "cifar_resnet20"}, f)
  assert checkpoint.read_workdir_config(RUN) == {"model": "cifar_resnet20"}


def test_the_lock_on_an_object_store_is_a_lease_and_says_so(bucket, caplog):
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(RUN)
    lock.acquire()
  try:
    assert lock.held and not lock.kernel_lock
    assert "object store" in caplog.text and "one job per workdir" in caplog.text
    assert read_owner(RUN).same_process(LockOwner.this_process())
    with pytest.raises(WorkdirLockedError, match="heartbeat"):
      WorkdirLock(RUN).acquire()
  finally:
    lock.release()
  assert read_owner(RUN) is None
  shutil.rmtree(bucket)
