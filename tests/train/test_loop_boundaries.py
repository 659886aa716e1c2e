"""The loop never waits on the host between its boundaries.

A run under `jax.transfer_guard_device_to_host("disallow")` fails at the
first implicit device-to-host copy (a float() of a metric, a bool() of a
NaN flag); the loop's only reads are explicit `jax.device_get`s at log,
validation and checkpoint boundaries, which are counted here. Also: the
device-resident "synthetic" dataset, the final variables that run()
returns, and the prefetch depth's checks.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cnnjax import models, sharding
from cnnjax.errors import ConfigError
from cnnjax.train import loop, run
from cnnjax.scoring import metrics as metrics_lib


def test_metrics_reach_the_host_only_at_boundaries(tiny_config, tmp_path, monkeypatch):
  fetched_at = []
  real_write_train_row = loop.write_train_row

  def counting(r, writer, bar, state, window, step, window_start):
    fetched_at.append((step, len(window)))
    return real_write_train_row(r, writer, bar, state, window, step, window_start)

  monkeypatch.setattr(loop, "write_train_row", counting)
  calls = []
  real_to_host = metrics_lib.to_host
  monkeypatch.setattr(metrics_lib, "to_host", lambda tree: calls.append(1) or real_to_host(tree))
  config = tiny_config(**{"run.num_steps": 12, "run.log_every_steps": 4, "eval.every_steps": -1})
  with jax.transfer_guard_device_to_host("disallow"):
    summary = run(config, str(tmp_path / "guarded"))
  assert summary["step"] == 12
  # One fetch of four steps' metrics per boundary; nothing between them.
  assert fetched_at == [(4, 4), (8, 4), (12, 4)]
  # Three windows, the final evaluation's sums and its learning rate: nothing per step.
  assert len(calls) == 5, calls


def test_run_returns_the_final_variables(tiny_config, tmp_path):
  config = tiny_config(**{"run.num_steps": 2})
  summary = run(config, str(tmp_path / "variables"))
  model = models.create(config.model.name, num_classes=10, **config.model.kwargs)
  size = config.input.image_size
  images = np.zeros((2, size, size, 3), np.float32)
  logits = model.apply(summary["variables"], images)
  assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()
  assert set(summary["variables"]) == {"params", "batch_stats"}


def test_synthetic_dataset_runs_the_loop_without_host_input(tiny_config, tmp_path):
  config = tiny_config(**{"input.dataset": "synthetic", "model.num_classes": 10,
                          "run.num_steps": 4, "run.log_every_steps": 2})
  summary = run(config, str(tmp_path / "synthetic"))
  assert summary["step"] == 4 and summary["eval"]["num_examples"] > 0


def test_prefetch_keeps_order_and_refuses_a_depth_below_one(tiny_config, tmp_path):
  mesh = sharding.make_mesh()
  batches = [{"image": np.full((2, 1), i, np.float32)} for i in range(5)]
  placed = list(sharding.prefetch_to_device(iter(batches), mesh, depth=2))
  assert [int(b["image"][0, 0]) for b in placed] == [0, 1, 2, 3, 4]
  assert all(isinstance(b["image"], jax.Array) for b in placed)
  with pytest.raises(ValueError, match="depth"):
    next(sharding.prefetch_to_device(iter(batches), mesh, depth=0))
  with pytest.raises(ConfigError, match="input.prefetch_batches"):
    run(tiny_config(**{"input.prefetch_batches": 0}), str(tmp_path / "no_prefetch"))


def test_the_whole_loop_runs_without_tensorflow_or_ml_collections(tmp_path):
  """A bare accelerator image has neither: run() on the synthetic dataset needs none."""
  import subprocess
  import sys
  script = f"""
import sys
sys.modules.update(tensorflow=None, tensorflow_datasets=None, ml_collections=None)
from cnnjax.train import config as config_lib, run
config = config_lib.defaults()
config["input"].update(dataset="synthetic", image_size=16)
config["model"].update(num_classes=10,
                       kwargs={{"stage_sizes": (1, 1, 1), "width_multiplier": 0.25}})
config["run"].update(batch_size=8, num_steps=2, log_every_steps=1, progress_bar=False)
summary = run(config, {str(tmp_path / "bare")!r})
assert summary["step"] == 2, summary
print("OK", sorted(m for m, module in sys.modules.items()
                   if module is not None and m.split(".")[0] in ("tensorflow", "ml_collections")))
"""
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK []" in result.stdout, result.stdout


def test_boundary_uint8_ships_uint8_through_the_loop(tiny_config, tmp_path):
  config = tiny_config(**{"input.boundary": "uint8", "input.augment": "cifar",
                          "run.num_steps": 4})
  prepared = loop.prepare(loop.config_lib.validate(config), str(tmp_path / "uint8"))
  assert prepared.first_batch["image"].dtype == np.uint8  # a quarter of float32's bytes
  assert prepared.rules.device_input is not None
  summary = run(config, str(tmp_path / "uint8_run"))
  assert summary["step"] == 4 and np.isfinite(summary["eval"]["loss"])
