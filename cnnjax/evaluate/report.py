"""The evaluation report as a text table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def format_table(report: Mapping[str, Any]) -> str:
  """The report as a text table: one row per member, then the ensemble."""
  rows = [(m["name"], m["top1_error"], m["top5_error"]) for m in report["members"]]
  if len(rows) > 1:
    rows.append((f"ensemble of {len(rows)}", report["top1_error"], report["top5_error"]))
  width = max(len("model"), *(len(name) for name, _, _ in rows))
  title = f"view {report['view']}"
  if "scales" in report:
    title += f", scales {report['scales']}"
  if "dataset" in report:
    title += f", {report['dataset']} {report['split']}"
  title += f", {report['num_examples']} examples"
  lines = [title, f"{'model':<{width}}  top-1 err  top-5 err",
           f"{'-' * width}  ---------  ---------"]
  lines += [f"{name:<{width}}  {top1 * 100:8.2f}%  {top5 * 100:8.2f}%" for name, top1, top5 in rows]
  return "\n".join(lines)
