"""Without the `notebooks` extra, every notebook's first cell says how to install it.

`pip install -e .` leaves out matplotlib; a notebook opened then must not
stop at a bare "No module named 'matplotlib'". A fresh interpreter in which
matplotlib cannot be imported runs each notebook's first code cell, which
must raise an ImportError naming the install line, before anything else
runs; the README's install table names the extra and the notebooks' page the same line.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "notebooks", "*.ipynb")))
INSTALL_LINE = 'pip install -e ".[notebooks]"'

SCRIPT = r'''
import json, sys
sys.modules["matplotlib"] = None  # as if the extra were not installed
for path in sys.argv[1:]:
  notebook = json.load(open(path, encoding="utf-8"))
  cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")
  try:
    exec(compile("".join(cell["source"]), path, "exec"), {"__name__": "__main__"})
  except ImportError as error:
    print(json.dumps([path, str(error)]))
  else:
    print(json.dumps([path, None]))
'''


def test_first_cell_names_the_extra_when_matplotlib_is_missing():
  assert NOTEBOOKS
  environ = dict(os.environ, CNNJAX_SMOKE="1", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT, *NOTEBOOKS], capture_output=True,
                          text=True, timeout=300, cwd=REPOSITORY_ROOT, env=environ)
  assert result.returncode == 0, result.stderr
  messages = dict(json.loads(line) for line in result.stdout.splitlines() if line.startswith("["))
  assert sorted(messages) == NOTEBOOKS, result.stdout
  for path, message in messages.items():
    assert message is not None and INSTALL_LINE in message and "matplotlib" in message, (
        path, message)


def test_readme_and_extra_name_what_the_notebooks_import():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  with open(os.path.join(REPOSITORY_ROOT, "pyproject.toml"), "rb") as f:
    extra = tomllib.load(f)["project"]["optional-dependencies"]["notebooks"]
  assert any(requirement.startswith("matplotlib") for requirement in extra)
  with open(os.path.join(REPOSITORY_ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  install_section = readme[readme.index("## Install"):readme.index("## Documentation")]
  assert "| `[notebooks]` |" in install_section
  with open(os.path.join(REPOSITORY_ROOT, "docs", "index.md"), encoding="utf-8") as f:
    index = f.read()
  assert INSTALL_LINE in index[index.index("## Notebooks"):]
