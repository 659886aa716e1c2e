"""Train-step throughput of cnnjax models, beside their PyTorch twins.

    python -m benchmarks.train_step --models resnet50,cifar_resnet56 \
        --batch_sizes 16 --image_sizes 224 --dtypes float32,bfloat16 \
        [--steps 10 --warmup 2 --rounds 5 --peak_flops 9.9e14 --no-torch \
         --torch_modes eager,compile --xla_flags= --xla_flags=--xla_cpu_use_onednn=true \
         --patches lax_kernels --train_step real,minimal --check_numerics \
         --output results.json]

For every (model, batch size, image size, dtype) it reports, per variant:
compile time; the median step time over the timed steps after warm-up, with
min and max; images/s; peak memory (device peak on an accelerator, peak RSS
of the worker process on a CPU); MFU = 3 x 2 x MACs x images/s / peak FLOP/s,
MACs from `cnnjax.models.profile`; the machine's load average. With torch and
torchvision installed the torchvision twin runs too (eager and torch.compile,
channels-last, same batch, resolution and precision), and each JAX variant
gets its throughput ratio jax/torch.

How it measures. Each variant runs in its own worker process (fresh peak
memory, its own XLA_FLAGS). A JAX worker starts as train.py does: process
settings from `cnnjax.xla_cpu.configure_process()` and, on the CPU backend,
the model parts `cnnjax.models.cpu.parts()`; `--patches=lax_kernels,
xla_defaults,glibc_malloc` gives what a library user's own process gets
without opting in (the default graph, XLA's flags, glibc's malloc). The
worker builds the model and the real train step
(`cnnjax.train.steps.train_step`), places one synthetic batch on the
device once, compiles, warms up and waits. The parent then interleaves the
timed steps in rounds (jax, torch, torch.compile, then the reverse order),
so every variant sees the same machine load; the ratios come from the same
run. Nothing here imports TensorFlow or ml_collections.

Several `--xla_flags`, `--patches` (see benchmarks/_variants.py),
`--model_kwargs` or `--train_step` values make several JAX variants, timed
side by side. `--check_numerics` recomputes the first (default) variant's
logits, loss, gradients and new BatchNorm statistics in float64 from the same
initial state and batch, and calls a variant "same" when it is no further
from that reference than the default is (relative L2, within a factor 2).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _common
from benchmarks import _variants

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_TIMEOUT_S = 3600.0


# --------------------------------------------------------------- arguments


def _comma_list(text: str) -> list[str]:
  return [item.strip() for item in text.split(",") if item.strip()]


def _int_list(text: str) -> list[int]:
  return [int(item) for item in _comma_list(text)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.train_step",
      description=__doc__.split("\n\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", type=_comma_list, default=["resnet50"])
  parser.add_argument("--batch_sizes", type=_int_list, default=[16])
  parser.add_argument("--image_sizes", type=_int_list, default=[224])
  parser.add_argument("--dtypes", type=_comma_list, default=["float32"])
  parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps after the first (compiling) one")
  parser.add_argument("--rounds", type=int, default=None,
                      help="the timed steps are split into this many interleaved rounds "
                           "(default: one step per round, the finest interleaving)")
  parser.add_argument("--peak_flops", type=float, default=None,
                      help="peak FLOP/s for MFU; default: the accelerator table, or a "
                           "measured matmul on a CPU")
  parser.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                      help="also time the torchvision twin (when torch is installed)")
  parser.add_argument("--torch_modes", type=_comma_list, default=["eager", "compile"])
  parser.add_argument("--threads", type=int, default=None,
                      help="torch threads; default the cores this process may use")
  parser.add_argument("--xla_flags", action="append", default=None,
                      help="XLA_FLAGS of one JAX variant, written --xla_flags=--xla_...=v "
                           "(repeat for several; --xla_flags= is the inherited environment)")
  parser.add_argument("--patches", action="append", default=None,
                      help="comma-separated model variants of one JAX variant (repeat for "
                           "several; '' = none); see benchmarks/_variants.py")
  parser.add_argument("--model_kwargs", action="append", default=None,
                      help="JSON overrides for cnnjax.models.create of one JAX variant")
  parser.add_argument("--train_step", type=_comma_list, default=["real"],
                      help="real (cnnjax.train.steps.train_step) and/or minimal")
  parser.add_argument("--check_numerics", action="store_true",
                      help="compare every JAX variant's logits/loss/grads with the first's")
  parser.add_argument("--output", default=None, help="write the full report as JSON here")
  parser.add_argument("--setup_timeout_s", type=float, default=SETUP_TIMEOUT_S)
  args = parser.parse_args(argv)
  for name in args.train_step:
    if name not in ("real", "minimal"):
      parser.error(f"--train_step takes real and/or minimal; got {name!r}")
  for mode in args.torch_modes:
    if mode not in ("eager", "compile"):
      parser.error(f"--torch_modes takes eager and/or compile; got {mode!r}")
  args.rounds = args.steps if args.rounds is None else args.rounds
  if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
    parser.error("--steps >= 1, --warmup >= 0, --rounds >= 1")
  args.xla_flags = args.xla_flags or [""]
  args.patches = [_comma_list(p) for p in (args.patches or [""])]
  try:
    args.model_kwargs = [json.loads(k) if k.strip() else {} for k in (args.model_kwargs or [""])]
  except json.JSONDecodeError as error:
    parser.error(f"--model_kwargs must be JSON objects: {error}")
  return args


# ----------------------------------------------------------------- workers


class Worker:
  """A living worker process and the replies it has sent."""

  def __init__(self, label: str, spec: dict[str, Any], env: dict[str, str]):
    self.label = label
    self.spec = spec
    self.stderr = tempfile.TemporaryFile(mode="w+")
    self.process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._worker", json.dumps(spec)],
        cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self.stderr, text=True, bufsize=1)
    self.messages: queue.Queue = queue.Queue()
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self) -> None:
    for line in self.process.stdout:
      message = _common.parse(line)
      if message is not None:
        self.messages.put(message)
    self.messages.put(None)  # end of stream

  def stderr_tail(self, chars: int = 3000) -> str:
    self.stderr.seek(0)
    return self.stderr.read()[-chars:]

  def receive(self, timeout_s: float) -> dict[str, Any]:
    try:
      message = self.messages.get(timeout=timeout_s)
    except queue.Empty as error:
      self.kill()
      raise RuntimeError(f"{self.label}: no reply within {timeout_s:.0f} s") from error
    if message is None:
      self.process.wait()
      raise RuntimeError(f"{self.label}: worker exited ({self.process.returncode}) without "
                         f"replying; stderr:\n{self.stderr_tail()}")
    if message.get("event") == "error":
      self.kill()
      raise RuntimeError(f"{self.label}: {message['error']}\n{message.get('traceback', '')}")
    return message

  def command(self, op: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
    self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
    self.process.stdin.flush()
    return self.receive(timeout_s)

  def kill(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
      self.process.wait()

  def close(self) -> None:
    self.kill()
    self.stderr.close()


def _worker_env(xla_flags: str, patches: Sequence[str] = ()) -> dict[str, str]:
  env = dict(os.environ)
  env.update(_variants.environment(list(patches)))
  flags = " ".join(f for f in (env.get("XLA_FLAGS", ""), xla_flags) if f.strip())
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  # Honest compile times: no persistent compilation cache.
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  # Several workers share one accelerator (one times while the others wait), so
  # none may grab 75% of its memory up front; peak_bytes_in_use stays exact.
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # ... and torch.compile's compile time is measured cold, not from inductor's disk cache.
  env["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
  return env


def _torch_available() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def _jax_label(xla_flags: str, patches: list[str], model_kwargs: dict[str, Any],
               train_step: str) -> str:
  parts = ["jax"]
  if xla_flags.strip():
    parts.append(xla_flags.strip())
  if patches:
    parts.append("patch=" + "+".join(patches))
  if model_kwargs:
    parts.append(json.dumps(model_kwargs, sort_keys=True))
  if train_step != "real":
    parts.append(f"step={train_step}")
  return " ".join(parts)


# -------------------------------------------------------------- numerics


def compare_numerics(reference_path: str, other_path: str) -> dict[str, Any]:
  """Relative L2 distances of logits, loss, gradients and new BatchNorm statistics."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  reference, other = np.load(reference_path), np.load(other_path)
  compared = sorted(k for k in reference.files if not k.startswith("init_"))
  if compared != sorted(k for k in other.files if not k.startswith("init_")):
    return {"comparable": False, "why": "different array names"}
  for key in set(reference.files) & set(other.files):
    if key.startswith("init_") and not np.array_equal(reference[key], other[key]):
      return {"comparable": False, "why": f"different initial variables ({key})"}

  def relative(keys):
    num = sum(float(np.sum((other[k].astype(np.float64) - reference[k]) ** 2)) for k in keys)
    den = sum(float(np.sum(reference[k].astype(np.float64) ** 2)) for k in keys)
    return (num / den) ** 0.5 if den > 0 else num ** 0.5

  grads = [k for k in compared if k.startswith("grad:")]
  stats = [k for k in compared if k.startswith("batch_stats:")]
  worst_leaf = max(grads, key=lambda k: relative([k])) if grads else None
  return {
      "comparable": True,
      "loss_abs_diff": float(abs(float(other["loss"]) - float(reference["loss"]))),
      "logits_rel_l2": relative(["logits"]),
      "grads_rel_l2": relative(grads) if grads else 0.0,
      "grads_worst_leaf": worst_leaf,
      "grads_worst_leaf_rel_l2": relative([worst_leaf]) if worst_leaf else 0.0,
      "batch_stats_rel_l2": relative(stats) if stats else 0.0,
  }


NUMERICS_METRICS = ("logits_rel_l2", "grads_rel_l2", "batch_stats_rel_l2")
# A variant's distance from float64 may exceed the default's by this factor
# (plus a floor for distances at float32's resolution) and still count as the same.
ACCURACY_SLACK = 2.0
ACCURACY_FLOOR = 1e-6


def no_less_accurate(variant_vs_float64: dict[str, Any],
                     default_vs_float64: dict[str, Any]) -> bool:
  """True when the variant is about as close to float64 as the default is."""
  if not (variant_vs_float64.get("comparable") and default_vs_float64.get("comparable")):
    return False
  return all(variant_vs_float64[m] <= ACCURACY_SLACK * default_vs_float64[m] + ACCURACY_FLOOR
             for m in NUMERICS_METRICS)


# -------------------------------------------------------------- one config


def _chunks(total: int, parts: int) -> list[int]:
  parts = min(parts, total)
  return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_config(args: argparse.Namespace, model: str, batch_size: int, image_size: int,
               dtype: str, workdir: str) -> list[dict[str, Any]]:
  """All variants of one configuration, interleaved; one record per variant."""
  base = {"model": model, "batch_size": batch_size, "image_size": image_size, "dtype": dtype,
          "warmup": args.warmup}
  variants: list[tuple[str, dict[str, Any], str]] = []
  for index, (flags, patches, kwargs, step) in enumerate(itertools.product(
      args.xla_flags, args.patches, args.model_kwargs, args.train_step)):
    spec = {**base, "framework": "jax", "xla_flags": flags, "patches": patches,
            "model_kwargs": kwargs, "train_step": step, "peak_flops": args.peak_flops}
    if args.check_numerics:
      spec["numerics_path"] = os.path.join(workdir, f"numerics_{index}.npz")
    variants.append((_jax_label(flags, patches, kwargs, step), spec, flags))
  run_torch = args.torch and _torch_available()

  records: dict[str, dict[str, Any]] = {}
  workers: list[Worker] = []
  num_classes = None
  macs = peak_flops = peak_source = None
  reference_path = None
  try:
    # Set up one worker at a time (compiling is the heaviest part), then time them together.
    for label, spec, flags in variants:
      records[label] = {**base, "variant": label, "framework": "jax", "xla_flags": flags,
                        "patches": spec["patches"], "model_kwargs": spec["model_kwargs"]}
      worker = Worker(label, spec, _worker_env(flags, spec["patches"]))
      try:
        ready = worker.receive(args.setup_timeout_s)
      except RuntimeError as error:
        records[label]["error"] = str(error)
        worker.close()
        continue
      records[label].update({k: v for k, v in ready.items() if k != "event"})
      if args.check_numerics and reference_path is None:
        reference_path = _float64_reference(args, spec, workdir)
      num_classes = num_classes or ready["num_classes"]
      macs = macs or ready["macs_per_image"]
      if peak_flops is None:
        peak_flops, peak_source = ready["peak_flops"], ready["peak_flops_source"]
      workers.append(worker)
    if run_torch and num_classes is not None:
      for mode in args.torch_modes:
        label = "torch eager" if mode == "eager" else "torch.compile"
        spec = {**base, "framework": "torch", "mode": mode, "num_classes": num_classes,
                "threads": args.threads}
        records[label] = {**base, "variant": label, "framework": "torch"}
        worker = Worker(label, spec, _worker_env(""))
        try:
          ready = worker.receive(args.setup_timeout_s)
        except RuntimeError as error:
          records[label]["error"] = str(error)
          worker.close()
          continue
        records[label].update({k: v for k, v in ready.items() if k != "event"})
        workers.append(worker)

    round_medians: dict[str, list[float]] = {w.label: [] for w in workers}
    step_seconds: dict[str, list[float]] = {w.label: [] for w in workers}
    cpu_seconds: dict[str, list[float]] = {w.label: [] for w in workers}
    loads: dict[str, list[list[float]]] = {w.label: [] for w in workers}
    for round_index, count in enumerate(_chunks(args.steps, args.rounds)):
      order = workers if round_index % 2 == 0 else workers[::-1]
      for worker in order:
        if worker.label in records and "error" in records[worker.label]:
          continue
        try:
          reply = worker.command("time", args.setup_timeout_s, steps=count)
        except RuntimeError as error:
          records[worker.label]["error"] = str(error)
          continue
        step_seconds[worker.label] += reply["step_s"]
        cpu_seconds[worker.label] += reply["cpu_s"]
        round_medians[worker.label].append(_median(reply["step_s"]))
        loads[worker.label] += [reply["load_before"], reply["load_after"]]
    for worker in workers:
      record = records[worker.label]
      if "error" not in record:
        try:
          finished = worker.command("finish", 60.0)
          record.update({k: v for k, v in finished.items() if k != "event"})
        except RuntimeError as error:
          record["error"] = str(error)
      record.update(_common.step_statistics(step_seconds[worker.label], batch_size))
      record["step_cpu_s_median"] = (_median(cpu_seconds[worker.label])
                                     if cpu_seconds[worker.label] else None)
      record["round_step_s_median"] = round_medians[worker.label]
      record["load_avg"] = loads[worker.label]
  finally:
    for worker in workers:
      worker.close()

  for record in records.values():
    record["macs_per_image"] = macs
    record["peak_flops"] = args.peak_flops or peak_flops
    record["peak_flops_source"] = "given (--peak_flops)" if args.peak_flops else peak_source
    record["mfu"] = _common.mfu(macs, record.get("images_per_s"), record["peak_flops"])
  _add_ratios(records)
  if args.check_numerics:
    _add_numerics(records, variants, reference_path)
  return list(records.values())


def _float64_reference(args, spec: dict[str, Any], workdir: str) -> str | dict[str, str]:
  """Runs the float64 recomputation of the first variant's numerics; its .npz path."""
  reference = {**spec, "framework": "jax_float64_reference",
               "numerics_source": spec["numerics_path"],
               "numerics_path": os.path.join(workdir, "numerics_float64.npz")}
  worker = Worker("float64 reference", reference, _worker_env("", spec["patches"]))
  try:
    worker.receive(args.setup_timeout_s)
    return reference["numerics_path"]
  except RuntimeError as error:
    return {"error": str(error)}
  finally:
    worker.close()


def _median(values: Sequence[float]) -> float:
  ordered = sorted(values)
  middle = len(ordered) // 2
  return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def _add_ratios(records: dict[str, dict[str, Any]]) -> None:
  """jax/torch throughput ratios: of the overall medians, and per interleaved round.

  On a shared machine the load changes within seconds, so the overall medians
  of two variants can see different loads; the median of the per-round ratios
  (`paired`, steps taken back to back) is the figure to quote.
  """
  first_jax = next(label for label, r in records.items() if r["framework"] == "jax")
  for label, record in records.items():
    if record["framework"] != "jax" or not record.get("images_per_s"):
      continue
    for torch_label in ("torch eager", "torch.compile"):
      other = records.get(torch_label)
      if not other or not other.get("images_per_s"):
        continue
      key = "eager" if torch_label == "torch eager" else "compile"
      record[f"ratio_vs_torch_{key}"] = record["images_per_s"] / other["images_per_s"]
      record[f"round_ratios_vs_torch_{key}"] = [
          t / j for j, t in zip(record["round_step_s_median"], other["round_step_s_median"])]
      record[f"paired_ratio_vs_torch_{key}"] = _median(record[f"round_ratios_vs_torch_{key}"])
      # Quietest step of each: what each reaches when the machine leaves it alone.
      record[f"best_step_ratio_vs_torch_{key}"] = other["step_s_min"] / record["step_s_min"]
    if label != first_jax and records[first_jax].get("images_per_s"):
      record["paired_speedup_vs_default"] = _median([
          d / j for j, d in zip(record["round_step_s_median"],
                                records[first_jax]["round_step_s_median"])])


def _add_numerics(records, variants, reference_path) -> None:
  """Each JAX variant vs the first (the default) and both vs the float64 reference."""
  default_label, default_spec, _ = variants[0]
  if "error" in records[default_label]:
    return
  if not isinstance(reference_path, str):
    records[default_label]["numerics"] = {"float64_reference": reference_path}
    return
  default_vs_float64 = compare_numerics(reference_path, default_spec["numerics_path"])
  records[default_label]["numerics"] = {"vs_float64": default_vs_float64}
  for label, spec, _ in variants[1:]:
    if "error" in records[label]:
      continue
    vs_default = compare_numerics(default_spec["numerics_path"], spec["numerics_path"])
    # The float64 reference starts from the default's variables; a variant whose
    # initialisation came out different (e.g. other elementwise code for the
    # random initialisers) cannot be judged against it.
    vs_float64 = (compare_numerics(reference_path, spec["numerics_path"])
                  if vs_default.get("comparable") else vs_default)
    records[label]["numerics"] = {
        "vs_default": vs_default,
        "vs_float64": vs_float64,
        "default_vs_float64": default_vs_float64,
        "no_less_accurate_than_default": no_less_accurate(vs_float64, default_vs_float64),
    }


# ---------------------------------------------------------------- report


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _format(value: Any, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def _ratio_cell(record: dict[str, Any], mode: str) -> str:
  paired = record.get(f"paired_ratio_vs_torch_{mode}")
  best = record.get(f"best_step_ratio_vs_torch_{mode}")
  return "-" if paired is None else f"{paired:.2f} ({best:.2f})"


def format_table(records: list[dict[str, Any]]) -> str:
  """The printed table; ratios are paired (median over interleaved rounds)."""
  header = ("model", "batch", "size", "dtype", "variant", "compile s", "step s (min-max)",
            "img/s", "MFU", "peak GiB", "vs default", "jax/torch eager (best)",
            "jax/torch.compile (best)", "load 1m")
  rows = [header]
  for r in records:
    if "error" in r:
      rows.append((r["model"], str(r["batch_size"]), str(r["image_size"]), r["dtype"],
                   r["variant"], "ERROR", r["error"].splitlines()[0][:60], "", "", "", "", "",
                   "", ""))
      continue
    steps = (f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f})"
             if r.get("step_s_median") is not None else "-")
    loads = [entry[0] for entry in r.get("load_avg", []) if entry]
    rows.append((
        r["model"], str(r["batch_size"]), str(r["image_size"]), r["dtype"], r["variant"],
        _format(r.get("compile_s"), ".1f"), steps, _format(r.get("images_per_s"), ".2f"),
        _format(r.get("mfu"), ".1%"),
        _format(r.get("peak_memory_bytes") and r["peak_memory_bytes"] / 2**30, ".2f"),
        _format(r.get("paired_speedup_vs_default"), ".2f"),
        _ratio_cell(r, "eager"), _ratio_cell(r, "compile"),
        f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def format_numerics(record: dict[str, Any]) -> str:
  """One line: relative L2 distances (logits / grads / BN stats) vs float64 and vs the default."""
  numerics = record["numerics"]

  def triple(comparison):
    if not comparison or not comparison.get("comparable"):
      return (comparison or {}).get("why") or (comparison or {}).get("error", "-")
    return "/".join(f"{comparison[m]:.1e}" for m in NUMERICS_METRICS)

  line = f"  numerics {record['variant']}: vs float64 {triple(numerics.get('vs_float64'))}"
  if "vs_default" in numerics:
    verdict = ("same" if numerics["no_less_accurate_than_default"] else
               "NOT SHOWN SAME" if not numerics["vs_default"].get("comparable") else
               "LESS ACCURATE")
    line += f"; vs default {triple(numerics['vs_default'])}; {verdict}"
  return line + "  (logits/grads/BN stats, relative L2)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark, prints the table; returns (and optionally writes) the report."""
  args = parse_args(argv)
  started = time.time()
  report: dict[str, Any] = {
      "meta": {
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "argv": list(sys.argv[1:] if argv is None else argv),
          "cpu": _cpu_model(),
          "cpu_count": _common.cpu_count(),
          "python": platform.python_version(),
          "inherited_xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_avg_start": _common.load_average(),
          "torch_available": _torch_available(),
      },
      "results": [],
  }
  with tempfile.TemporaryDirectory(prefix="train_step_bench_") as workdir:
    for model, batch_size, image_size, dtype in itertools.product(
        args.models, args.batch_sizes, args.image_sizes, args.dtypes):
      records = run_config(args, model, batch_size, image_size, dtype, workdir)
      report["results"] += records
      print(format_table(records), flush=True)
      for record in records:
        if record.get("numerics"):
          print(format_numerics(record), flush=True)
      print(flush=True)
  report["meta"]["load_avg_end"] = _common.load_average()
  report["meta"]["wall_s"] = time.time() - started
  report["meta"]["tensorflow_imported"] = "tensorflow" in sys.modules
  if args.output:
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
  return report


if __name__ == "__main__":
  main()
