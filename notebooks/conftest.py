"""Notebook tests: every notebook runs top to bottom (`python -m pytest --nbmake notebooks`).

The kernels nbmake starts inherit this process's environment, so settings made
here reach them:

* `CNNJAX_SMOKE=1` makes each notebook shrink its training runs, sample
  counts and model lists (one `SMOKE = ...` switch at its top; notebooks
  07-10 read it as `lessons.REDUCED`, notebooks/lessons.py: a fiftieth of the
  steps, two seeds, at most 256 training and 250 test images, the same code),
  so that the whole set stays a few minutes on a 2-core CPU. Set `CNNJAX_SMOKE=0` to execute
  the full versions, as committed, instead.
* The repository root joins `PYTHONPATH`, so the notebooks import this
  checkout's `cnnjax` whether or not it is pip-installed.
"""

import os

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("CNNJAX_SMOKE", "1")
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if REPOSITORY_ROOT not in _paths:
  os.environ["PYTHONPATH"] = os.pathsep.join([REPOSITORY_ROOT] + _paths)
