"""Data parallelism: 8 virtual devices vs 1, two processes vs one, restore onto fewer devices.

Each configuration runs in a fresh Python process (sharding_worker.py),
because the number of CPU devices is fixed when JAX starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "sharding_worker.py")
TIMEOUT_S = 240


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
  """The 1-process, 8-device run: its report and its parameters."""
  out = str(tmp_path_factory.mktemp("sharding") / "single.npz")
  result = subprocess.run([sys.executable, WORKER, "single", out], env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")][-1]
  return json.loads(line[len("REPORT "):]), dict(np.load(out))


@pytest.mark.slow
def test_eight_devices_match_one_with_synchronised_batchnorm(single_process):
  report, _ = single_process
  assert report["synchronised_8_vs_1"] < 1e-5
  assert report["params_replicated"]


@pytest.mark.slow
def test_checkpoint_from_eight_devices_restores_on_one(single_process):
  report, _ = single_process
  assert report["restored_on_1_device"] == 0.0
  assert report["restored_devices"] == [1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(single_process, tmp_path):
  _, reference = single_process
  out = str(tmp_path / "multi.npz")
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, WORKER, "multi", out, port, str(i)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  result = dict(np.load(out))
  assert result.keys() == reference.keys()
  for key in reference:
    np.testing.assert_allclose(result[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key)
