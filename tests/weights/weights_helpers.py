"""Runs the reference networks (Keras, torchvision) in their own processes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def run_script(script: str, *args: str, env: dict[str, str] | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
  environment = dict(os.environ, **(env or {}))
  environment["PYTHONPATH"] = REPO + os.pathsep + environment.get("PYTHONPATH", "")
  environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  result = subprocess.run([sys.executable, *([os.path.join(HERE, script)] if script.endswith(".py")
                                             else ["-c", script]), *args],
                          capture_output=True, text=True, env=environment, timeout=timeout)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def relative_error(got, want) -> float:
  got, want = np.asarray(got), np.asarray(want)
  return float(np.abs(got - want).max() / np.abs(want).max())
