"""The layer contracts of `.importlinter` hold (`lint-imports`, as CI runs it), and they bite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint_imports(package_root: str) -> subprocess.CompletedProcess:
  executable = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which(
      "lint-imports")
  if executable is None:
    pytest.fail("lint-imports is not installed (import-linter, the test extra)")
  env = dict(os.environ, PYTHONPATH=package_root)
  return subprocess.run([executable, "--config", os.path.join(ROOT, ".importlinter"),
                         "--no-cache"], cwd=package_root, env=env, capture_output=True, text=True,
                        timeout=300)


def test_the_import_contracts_hold():
  result = _lint_imports(ROOT)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("cnnjax/dali/records.py", "from cnnjax.train import losses", "imports neither training"),
    ("cnnjax/preprocessing/device.py", "import tensorflow", "TensorFlow is imported by"),
    ("cnnjax/data/sources.py", "from cnnjax.data import pipeline", "No import cycle"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
  """The same contracts on a copy of the package with one import added."""
  shutil.copytree(os.path.join(ROOT, "cnnjax"), tmp_path / "cnnjax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  path = tmp_path / module
  path.write_text(path.read_text() + f"\n\ndef _added():\n  {line}\n")
  result = _lint_imports(str(tmp_path))
  assert result.returncode != 0
  broken = result.stdout[result.stdout.index("Broken contracts"):]
  assert contract in broken, result.stdout[-4000:]
