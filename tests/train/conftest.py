"""Fixtures for the training tests: a prepared digits data_dir and tiny run configs."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
  sys.path.insert(0, HERE)


@pytest.fixture()
def tiny_config(digits_dir):
  """A factory of small, fast quickstart-like configs (ResNet-8 at width 1/4, 16x16 digits)."""
  from train_helpers import make_tiny_config

  def factory(**overrides):
    return make_tiny_config(digits_dir, **overrides)
  return factory
