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
  config = quickstart.get_config()
  overrides = dict(
      data_dir=digits_dir, model="cifar_resnet20",
      model_kwargs={"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
      image_size=16, batch_size=16, eval_batch_size=64, eval_num_batches=1, num_steps=3,
      schedule="constant", warmup_steps=-1, log_every_steps=1, eval_every_steps=-1,
      checkpoint_every_steps=-1, ema_decay=0.5, progress_bar=False,
      compilation_cache_dir="none")
  for key, value in overrides.items():
    config[key] = value
  workdir = str(tmp_path_factory.mktemp("quickstart_run"))
  run(config, workdir)
  return workdir
