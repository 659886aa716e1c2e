"""benchmarks/gpu_check.sh in its smoke mode, and its refusals.

The smoke run is the real script with tiny sizes on the CPU: every row's
code runs (loop_b256 is left out: it is loop_b32's code at another batch
size). No timing is asserted; the test checks what each row reports and
that the script's exit code follows the rows. Without --smoke, on a machine
where JAX sees no GPU, the script must stop at its preflight with a message
that says so.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
SMOKE_ROWS = ("train_step", "compile_counts", "checkpoint", "host_to_device", "device_input",
              "loop_b32")


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GPU_CHECK_SMOKE", "ROWS", "OUT")}
  # A shared CPU: generous time limits (the real ones are sized for an H100/H200).
  env.update({"JAX_PLATFORMS": "cpu", "PYTHON": sys.executable, "TIMEOUT_SCALE": "6", **extra})
  return env


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_check")
  completed = subprocess.run(
      ["bash", str(SCRIPT), "--smoke", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=900, check=False, env=_env(ROWS=",".join(SMOKE_ROWS)))
  rows = {}
  for name in SMOKE_ROWS:
    path = out / "rows" / f"{name}.json"
    rows[name] = json.loads(path.read_text()) if path.exists() else None
  return completed, out, rows


def _finite_positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_run_passes_and_prints_the_table(smoke_run):
  completed, out, rows = smoke_run
  assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
  table = (out / "gpu_check.md").read_text()
  assert table in completed.stdout
  assert "SMOKE" in table.splitlines()[0]
  for name in SMOKE_ROWS:
    assert rows[name] is not None and rows[name]["status"] == "ok", (name, rows[name])
    assert f"| {name} | ok |" in table
  summary = json.loads((out / "gpu_check.json").read_text())
  assert sorted(summary["rows"]) == sorted(SMOKE_ROWS)


def test_train_step_row_reports_throughput_and_flops(smoke_run):
  from cnnjax import models
  row = smoke_run[2]["train_step"]
  p = gpu_check.SMOKE
  assert _finite_positive(row["images_per_s"]) and _finite_positive(row["first_step_s"])
  assert row["steps_timed"] == p["steps"] and math.isfinite(row["loss"])
  macs = models.profile(p["model"], image_size=p["image_size"], **p["model_kwargs"]).macs
  assert row["macs_per_image"] == macs and row["flops_per_image"] == 6 * macs
  # A CPU has no data-sheet peak and no device memory statistics: said, not invented.
  assert row["mfu"] is None and row["peak_memory_bytes"] is None
  assert not row["tensorflow_imported"] and not row["ml_collections_imported"]


def test_every_step_function_compiled_once(smoke_run):
  row = smoke_run[2]["compile_counts"]
  assert row["backend_compilations"] == {
      "train_step_fn": 1, "eval_step_fn": 1, "after_validation_fn": 1}
  assert row["jit_cache_entries"] == row["backend_compilations"]
  assert row["train_steps"] == gpu_check.SMOKE["compile_steps"] and row["validations"] == 2


def test_checkpoint_row_restores_what_it_saved(smoke_run):
  row = smoke_run[2]["checkpoint"]
  assert row["restored_equals_saved"] is True and row["restored_on_device"] is True
  assert _finite_positive(row["state_bytes"])
  assert 0 < row["save_returned_s"] <= row["save_on_disk_s"] and row["restore_s"] > 0
  assert not row["tensorflow_imported"]


def test_device_input_row_times_the_steps_share_of_the_input(smoke_run):
  row = smoke_run[2]["device_input"]
  assert row["status"] == "ok" and _finite_positive(row["images_per_s"]), row
  assert row["tensorflow_imported"] is False  # the GPU hosts have no TensorFlow


def test_host_to_device_row_moves_a_quarter_of_the_bytes_in_uint8(smoke_run):
  row = smoke_run[2]["host_to_device"]
  p = gpu_check.SMOKE
  assert row["shape"] == [p["transfer_batch"], p["image_size"], p["image_size"], 3]
  assert row["float32"]["bytes"] == 4 * row["uint8"]["bytes"]
  for dtype in ("float32", "uint8"):
    assert _finite_positive(row[dtype]["gb_per_s"]) and _finite_positive(row[dtype]["images_per_s"])
  assert _finite_positive(row["uint8_over_float32_images_per_s"])


def test_loop_row_compares_the_loop_with_the_bare_step(smoke_run):
  row = smoke_run[2]["loop_b32"]
  assert row["batch_size"] == gpu_check.SMOKE["loop_batches"]["loop_b32"]
  assert row["dataset"] == "synthetic" and not row["tensorflow_imported"]
  for key in ("bare_images_per_s", "loop_images_per_s", "ratio"):
    assert _finite_positive(row[key]), (key, row[key])
  assert row["ratio"] == pytest.approx(row["loop_images_per_s"] / row["bare_images_per_s"])


def test_without_smoke_the_script_refuses_a_machine_without_gpu(tmp_path):
  completed = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300, check=False, env=_env())
  assert completed.returncode == gpu_check.GPU_MISSING_EXIT, completed.stderr[-2000:]
  assert "JAX sees no GPU" in completed.stderr and "--smoke" in completed.stderr
  assert "no row was run" in completed.stderr
  assert not list((tmp_path / "rows").glob("*.json"))


def test_a_row_refuses_to_run_without_gpu_outside_smoke(tmp_path):
  completed = subprocess.run(
      [sys.executable, "-m", "benchmarks.gpu_check", "row", "host_to_device", "--output_dir",
       str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=_env())
  assert completed.returncode == gpu_check.GPU_MISSING_EXIT
  assert "JAX sees no GPU" in completed.stderr


def test_a_failed_row_fails_the_script(tmp_path):
  # A python that crashes on every row command (and runs the preflight and table
  # normally): the script must go on to the table and exit non-zero.
  wrapper = tmp_path / "python"
  wrapper.write_text(f'#!/bin/sh\nif [ "$3" = row ]; then exit 7; fi\nexec {sys.executable} "$@"\n')
  wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
  out = tmp_path / "out"
  completed = subprocess.run(
      ["bash", str(SCRIPT), "--smoke", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300, check=False, env=_env(PYTHON=str(wrapper), ROWS="host_to_device,checkpoint"))
  assert completed.returncode == 1, completed.stdout + completed.stderr
  table = (out / "gpu_check.md").read_text()
  assert "| host_to_device | error | exited 7 without a result |" in table
  assert "| checkpoint | error | exited 7 without a result |" in table
  assert "rows failed: checkpoint, host_to_device" in completed.stderr


def test_table_marks_failed_and_timed_out_rows(tmp_path):
  rows = tmp_path / "rows"
  rows.mkdir()
  (rows / "train_step.json").write_text(json.dumps(
      {"status": "ok", "summary": "fast", "row_seconds": 1.0, "device": "gpu: H200 x1"}))
  (rows / "train_step.exit").write_text("0\n")
  (rows / "checkpoint.json").write_text(json.dumps(
      {"status": "fail", "summary": "slow", "reason": "restored != saved", "row_seconds": 2.0}))
  (rows / "checkpoint.exit").write_text("1\n")
  (rows / "loop_b32.exit").write_text("124\n")
  assert gpu_check.table(str(tmp_path), ["train_step", "checkpoint", "loop_b32"], False) == 1
  table = (tmp_path / "gpu_check.md").read_text()
  assert "gpu: H200 x1" in table.splitlines()[0]
  assert "| train_step | ok | fast | 1.0 |" in table
  assert "| checkpoint | fail | slow (restored != saved) | 2.0 |" in table
  assert "| loop_b32 | error | timed out | - |" in table
  assert gpu_check.table(str(tmp_path), ["train_step"], False) == 0
