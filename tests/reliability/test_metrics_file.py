"""metrics.jsonl survives a row cut short by a kill: reading skips it, writing starts afresh."""

from __future__ import annotations

import json

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
