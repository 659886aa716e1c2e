"""The train-step benchmark in its smallest form: it runs, reports every field, stays TF-free.

No timing is asserted (speed targets live in benchmarks/RESULTS.md); the
test checks that a report has the fields the README table is built from,
that its numbers are finite, and that neither the parent nor any worker
imported TensorFlow or ml_collections (the GPU host has neither).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _common, train_step

REQUIRED_FIELDS = (
    "model", "batch_size", "image_size", "dtype", "variant", "framework", "device", "train_step",
    "first_step_s", "step_s_median", "step_s_min", "step_s_max", "images_per_s",
    "peak_memory_bytes", "memory_kind", "macs_per_image", "peak_flops", "mfu", "load_avg",
    "steps_timed", "tensorflow_imported", "ml_collections_imported")
HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def _finite_positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  # A fresh process, as users run it: the TensorFlow check must not see modules
  # that other tests of this session imported.
  output = tmp_path_factory.mktemp("bench") / "report.json"
  completed = subprocess.run(
      [sys.executable, "-m", "benchmarks.train_step", "--models", "cifar_resnet20",
       "--batch_sizes", "2", "--image_sizes", "32", "--dtypes", "float32", "--steps", "2",
       "--warmup", "0", "--rounds", "2", "--torch_modes", "eager",
       # the variant mechanism: the plain lax kernels and XLA's own CPU options, and
       # the photometric distortions inside the step (uint8 batch)
       "--patches=", "--patches=lax_kernels,xla_defaults,device_photometric", "--output", str(output)],
      cwd=REPO_ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
      text=True, timeout=600, check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "cifar_resnet20" in completed.stdout  # the printed table
  return json.loads(output.read_text())


def test_every_variant_reports_finite_numbers(report):
  records = report["results"]
  assert [r["framework"] for r in records] == ["jax", "jax"] + (["torch"] if HAVE_TORCH else [])
  assert [r["train_step"].endswith("in the step)") for r in records[:2]] == [False, True]
  for record in records:
    assert "error" not in record, record.get("error")
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    assert not missing, f"{record['variant']} lacks {missing}"
    assert record["steps_timed"] == 2
    for field in ("step_s_median", "step_s_min", "step_s_max", "images_per_s",
                  "peak_memory_bytes", "macs_per_image", "peak_flops", "mfu", "first_step_s"):
      assert _finite_positive(record[field]), (record["variant"], field, record[field])
    assert record["step_s_min"] <= record["step_s_median"] <= record["step_s_max"]
    assert record["images_per_s"] == pytest.approx(2 / record["step_s_median"])
    assert len(record["load_avg"]) == 4  # before and after each of the two rounds


def test_jax_times_the_project_train_step_and_compares_with_torch(report):
  jax_record = report["results"][0]
  assert jax_record["train_step"] == "cnnjax.train.steps.train_step"
  assert _finite_positive(jax_record["compile_s"])
  assert math.isfinite(jax_record["first_loss"])
  # cifar_resnet20 at 32x32: 40.55 M multiply-adds per image (profile's count).
  assert jax_record["macs_per_image"] == pytest.approx(40.55e6, rel=0.01)
  if HAVE_TORCH:
    torch_record = report["results"][2]
    assert torch_record["torch_twin_exact"] is True
    assert jax_record["ratio_vs_torch_eager"] == pytest.approx(
        jax_record["images_per_s"] / torch_record["images_per_s"])


def test_no_tensorflow_or_ml_collections_anywhere(report):
  assert report["meta"]["tensorflow_imported"] is False
  for record in report["results"]:
    assert record["tensorflow_imported"] is False, record["variant"]
    assert record["ml_collections_imported"] is False, record["variant"]


def test_mfu_formula():
  # 3 passes x 2 FLOPs per multiply-add: 1 GMAC/image at 100 images/s on a 1.2 TFLOP/s chip.
  assert _common.mfu(10**9, 100.0, 1.2e12) == pytest.approx(0.5)
  assert _common.mfu(None, 100.0, 1e12) is None


def test_peak_flops_table_lookup():
  assert _common.lookup_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == (
      989e12, "table: H100 SXM dense bfloat16")
  assert _common.lookup_peak_flops("NVIDIA H200", "float32")[0] == 495e12  # TF32 by default
  assert _common.lookup_peak_flops("cpu", "float32")[0] is None


def test_numerics_verdict_uses_the_float64_distance_of_the_default(tmp_path):
  import numpy as np
  reference = {"loss": np.float64(1.0), "logits": np.ones((2, 3)),
               "grad:['w']": np.ones(4), "batch_stats:['m']": np.ones(2),
               "init_params:['w']": np.zeros(4, np.float32)}

  def save(name, grad_value):
    arrays = {**reference, "grad:['w']": np.full(4, grad_value, np.float32)}
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)

  float64 = save("float64.npz", 1.0)
  default = save("default.npz", 1.0 + 1e-3)  # the default's own float32 error
  close = save("close.npz", 1.0 - 1.5e-3)  # a different order of summation
  far = save("far.npz", 1.1)  # a real difference
  default_error = train_step.compare_numerics(float64, default)
  assert default_error["grads_rel_l2"] == pytest.approx(1e-3, rel=1e-3)
  assert train_step.no_less_accurate(train_step.compare_numerics(float64, close), default_error)
  assert not train_step.no_less_accurate(train_step.compare_numerics(float64, far), default_error)
  other_init = str(tmp_path / "other_init.npz")
  np.savez(other_init, **{**reference, "init_params:['w']": np.ones(4, np.float32)})
  assert train_step.compare_numerics(float64, other_init)["comparable"] is False


def test_variants_run_side_by_side(report):
  jax_records = [r for r in report["results"] if r["framework"] == "jax"]
  assert len(jax_records) == 2
  assert any("lax_kernels" in r["variant"] and "xla_defaults" in r["variant"]
             for r in jax_records)
