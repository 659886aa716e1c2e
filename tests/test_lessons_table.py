"""docs/lessons.md's claims table quotes the committed outputs of notebooks 07-10.

Every figure of a comparison a lessons notebook prints (on a line with a gap,
"... gap +8.3 points (seeds +6.2 to +10.5)", a "... vs ..." line or a verdict:
each gap and each "mean% (min-max)") must appear in the table, so a rerun of a
notebook that changes a number fails here until the table says the new one.
"""

from __future__ import annotations

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("07_alexnet_lessons", "08_vgg_lessons", "09_googlenet_ensembles", "10_resnet_lessons")
GAP = re.compile(r"gap [+-]\d+\.\d points \(seeds [+-]\d+\.\d to [+-]\d+\.\d\)")
SPREAD = re.compile(r"\d+\.\d% \(\d+\.\d-\d+\.\d\)")


def _printed(name: str) -> str:
  with open(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), encoding="utf-8") as f:
    cells = json.load(f)["cells"]
  return "".join("".join(output.get("text", "")) for cell in cells if cell["cell_type"] == "code"
                 for output in cell.get("outputs", []) if output.get("output_type") == "stream")


@pytest.fixture(scope="module")
def table() -> str:
  with open(os.path.join(ROOT, "docs", "lessons.md"), encoding="utf-8") as f:
    return f.read()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_committed_outputs_are_a_full_run(name):
  printed = _printed(name)
  assert "full run:" in printed and "reduced (CI) run" not in printed, (
      f"notebooks/{name}.ipynb holds no full run's outputs: execute it with CNNJAX_SMOKE=0")
  assert "VERDICT" in printed and "notebook wall time" in printed


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_measured_gap_and_spread_of_a_verdict_is_in_the_table(name, table):
  verdict_lines = [line for line in _printed(name).splitlines()
                   if GAP.search(line) or " vs " in line or line.startswith("VERDICT")]
  quoted = [m.group(0) for line in verdict_lines for m in GAP.finditer(line)]
  quoted += [m.group(0) for line in verdict_lines for m in SPREAD.finditer(line)]
  assert quoted, f"{name} printed no measured comparison"
  missing = sorted({q for q in quoted if q not in table})
  assert not missing, (f"docs/lessons.md does not quote these figures of notebooks/{name}.ipynb: "
                       f"{missing}; update its claims table from the notebook's outputs")
