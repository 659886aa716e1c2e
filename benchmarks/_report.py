"""Markdown tables from train-step benchmark reports.

    python -m benchmarks._report report1.json [report2.json ...] > table.md

One row per variant of every configuration, with the columns of the README
table; the machine, date and load come from each report's metadata. Ratios
are paired: the median over interleaved rounds of the per-round ratio.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

COLUMNS = ("model", "batch", "size", "dtype", "variant", "compile s", "step s median (min-max)",
           "img/s", "MFU", "peak mem GiB", "speed-up vs default", "jax/torch eager paired (best step)",
           "jax/torch.compile paired (best step)", "load 1m")


def _cell(value: Any, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def _ratio(record: dict[str, Any], mode: str) -> str:
  paired = record.get(f"paired_ratio_vs_torch_{mode}")
  best = record.get(f"best_step_ratio_vs_torch_{mode}")
  return "-" if paired is None else f"{paired:.2f} ({best:.2f})"


def rows(report: dict[str, Any]) -> list[list[str]]:
  out = []
  for r in report["results"]:
    if "error" in r:
      out.append([r["model"], str(r["batch_size"]), str(r["image_size"]), r["dtype"],
                  r["variant"], "error: " + r["error"].splitlines()[0][:80]] + [""] * 8)
      continue
    loads = [entry[0] for entry in r.get("load_avg", []) if entry]
    step = (f"{r['step_s_median']:.4g} ({r['step_s_min']:.4g}-{r['step_s_max']:.4g})"
            if r.get("step_s_median") is not None else "-")
    memory = r.get("peak_memory_bytes")
    out.append([
        r["model"], str(r["batch_size"]), str(r["image_size"]), r["dtype"], r["variant"],
        _cell(r.get("compile_s"), ".1f"), step, _cell(r.get("images_per_s"), ".2f"),
        _cell(r.get("mfu"), ".1%"), _cell(memory and memory / 2**30, ".2f"),
        _cell(r.get("paired_speedup_vs_default"), ".2f"),
        _ratio(r, "eager"), _ratio(r, "compile"),
        f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"])
  return out


def markdown(reports: Sequence[dict[str, Any]]) -> str:
  lines = []
  for report in reports:
    meta = report["meta"]
    devices = sorted({r.get("device", "?") for r in report["results"] if "device" in r})
    peak = next((r for r in report["results"] if r.get("peak_flops")), {})
    lines.append(f"{meta['date_utc']}, {', '.join(devices)} ({meta.get('cpu', '?')}, "
                 f"{meta.get('cpu_count', '?')} cores); MFU peak: "
                 f"{_cell(peak.get('peak_flops'), '.3g')} FLOP/s "
                 f"({peak.get('peak_flops_source', '-')}); "
                 f"`python -m benchmarks.train_step {' '.join(meta['argv'])}`")
    lines.append("")
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    lines.append("")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if not argv:
    print(__doc__.strip().splitlines()[2], file=sys.stderr)
    return 2
  reports = []
  for path in argv:
    with open(path, encoding="utf-8") as handle:
      reports.append(json.load(handle))
  print(markdown(reports))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
