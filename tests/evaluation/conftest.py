"""Fixtures of the evaluation tests: digits data, a tiny trained workdir, a hand-checkable model."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)


@pytest.fixture(scope="session")
def trained_workdir(digits_dir, tmp_path_factory) -> str:
  """The quickstart recipe shrunk to a few steps of a narrow ResNet-8, with EMA kept."""
  from cnnjax.configs import quickstart
  from cnnjax.train import run
  c = quickstart.get_config()
  c.input.data_dir, c.input.image_size = digits_dir, 16
  c.model.name = "cifar_resnet20"
  c.model.kwargs = {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25}
  c.run.batch_size, c.run.num_steps, c.run.log_every_steps = 16, 3, 1
  c.eval.batch_size, c.eval.num_batches, c.eval.every_steps = 64, 1, -1
  c.schedule.name, c.schedule.warmup_steps = "constant", -1
  c.checkpoint.every_steps = -1
  c.optimizer.ema_decay = 0.5
  c.run.progress_bar, c.run.compilation_cache_dir = False, "none"
  config = c
  workdir = str(tmp_path_factory.mktemp("quickstart_run"))
  run(config, workdir)
  return workdir
