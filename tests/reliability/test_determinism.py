"""Promise 7: the same seed and config give the same metrics on CPU; another seed does not.

Two short runs (8 steps) against the first 8 steps of the reference run
(same config otherwise: a constant learning rate does not depend
on the run's length, so every row of the short runs has its twin).
"""

from __future__ import annotations

import pytest
from reliability_helpers import KILL_RUN, make_config

from cnnjax.train import run
from cnnjax.train.writer import read_metrics

SHORT = 8


def _losses(workdir: str, up_to: int = SHORT) -> list[tuple[str, int, float]]:
  return [(row["split"], row["step"], row["loss"]) for row in read_metrics(workdir)
          if row["step"] <= up_to]


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, digits_dir, cache_dir):
  runs = {}
  for name, seed in (("same_seed", 0), ("other_seed", 1)):
    workdir = str(tmp_path_factory.mktemp(name))
    run(make_config(digits_dir, cache_dir, seed=seed, **dict(KILL_RUN, num_steps=SHORT)), workdir)
    runs[name] = workdir
  return runs


def test_same_seed_writes_identical_losses(reference_run, short_runs):
  reference, _ = reference_run
  expected = _losses(reference)
  assert len(expected) >= SHORT + SHORT // KILL_RUN["eval.every_steps"]  # train rows + val rows
  assert _losses(short_runs["same_seed"]) == expected


def test_other_seed_writes_different_losses(reference_run, short_runs):
  reference, _ = reference_run
  ours = _losses(short_runs["other_seed"])
  theirs = _losses(reference)
  assert [key[:2] for key in ours] == [key[:2] for key in theirs]
  different = sum(a[2] != b[2] for a, b in zip(ours, theirs))
  assert different >= len(ours) - 1, (ours[:3], theirs[:3])
