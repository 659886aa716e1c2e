"""Fixtures of the reliability tests: digits data, a shared compilation cache, a reference run.

Every compiled program here is the same tiny network (reliability_helpers.TINY),
so one persistent compilation cache, shared by this process and by every
`python train.py` subprocess, makes each restart cost an import, not a compile.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
  sys.path.insert(0, HERE)

from reliability_helpers import (KILL_RUN, enable_persistent_cache,  # noqa: E402
                                 make_config, restore_persistent_cache)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("reliability_jax_cache"))


@pytest.fixture(autouse=True, scope="module")
def persistent_cache(cache_dir):
  """This process compiles through the shared cache while a reliability module runs."""
  previous = enable_persistent_cache(cache_dir)
  yield cache_dir
  restore_persistent_cache(previous)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, digits_dir, cache_dir):
  """One uninterrupted KILL_RUN (seed 0) in this process: (workdir, summary)."""
  from cnnjax.train import run
  workdir = str(tmp_path_factory.mktemp("reference_run"))
  previous = enable_persistent_cache(cache_dir)
  try:
    summary = run(make_config(digits_dir, cache_dir, **KILL_RUN), workdir)
  finally:
    restore_persistent_cache(previous)
  return workdir, summary


@pytest.fixture()
def tiny_config(digits_dir, cache_dir):
  """A factory of tiny configs (reliability_helpers.TINY plus overrides)."""
  def factory(**extra):
    return make_config(extra.pop("data_dir", digits_dir), cache_dir, **extra)
  return factory
