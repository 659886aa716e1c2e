"""How long XLA takes to compile a train step, unrolled vs scanned stages.

    python benchmarks/compile_time.py                 # the three rows of RESULTS.md
    python benchmarks/compile_time.py --runs resnet50:unrolled resnet50:scanned+remat

Each run builds the step (forward in train mode, cross-entropy, backward,
plain `optax.sgd` update, new BatchNorm statistics), traces and lowers it
with abstract inputs (`jax.ShapeDtypeStruct`, so no parameters are
materialised), then times `lowered.compile()` with XLA's default options
plus train.py's process settings and model parts (`cnnjax.xla_cpu`,
`cnnjax.models.cpu` on the CPU backend).
Trace+lower and compile times are reported separately; every run happens in
a fresh process so no compilation cache is shared, the runs are repeated
`--repeats` times interleaved, and the fastest of each is kept (other
processes on a shared machine only ever add time). The machine's load
average is printed because compile times scale with the free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_RUNS = ("resnet152:unrolled", "resnet152:scanned", "cifar_resnet1202:scanned")


def measure(model_name: str, variant: str, batch_size: int, image_size: int | None) -> dict:
  """Trace, lower and compile one train step; returns the timings (seconds)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  import cnnjax.models as models  # pylint: disable=import-outside-toplevel

  spec = models.get_spec(model_name)
  size = image_size or spec.image_size
  # The model train.py builds (config.model.cpu_kernels="auto").
  parts = models.cpu.parts() if models.cpu.wanted("auto", jax.default_backend()) else {}
  model = models.create(model_name, scan_blocks="scanned" in variant,
                        remat="remat" in variant, **parts)
  images = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape)))
  optimizer = optax.sgd(0.1, momentum=0.9)
  opt_state = jax.eval_shape(optimizer.init, variables["params"])

  def train_step(params, batch_stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state["batch_stats"], opt_state, loss

  start = time.perf_counter()
  lowered = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(
      variables["params"], variables["batch_stats"], opt_state, images, labels)
  traced = time.perf_counter() - start
  start = time.perf_counter()
  lowered.compile()
  compiled = time.perf_counter() - start
  return {"model": model_name, "variant": variant, "batch": batch_size, "image": size,
          "trace_lower_s": round(traced, 2), "compile_s": round(compiled, 2),
          "jax": jax.__version__, "backend": jax.default_backend()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="*", default=list(DEFAULT_RUNS),
                      help="model:variant, variant in unrolled | scanned | scanned+remat")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--image-size", type=int, default=None,
                      help="default: the model's own (224, 32 for CIFAR)")
  parser.add_argument("--single", help=argparse.SUPPRESS)  # child process mode
  args = parser.parse_args()

  if args.single:
    # train.py's process settings (tuned XLA:CPU flags), before JAX starts.
    from cnnjax import xla_cpu  # pylint: disable=import-outside-toplevel
    xla_cpu.configure_process()
    model_name, variant = args.single.split(":")
    print(json.dumps(measure(model_name, variant, args.batch_size, args.image_size)))
    return

  print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {platform.processor() or ''} "
        f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()}")
  best: dict[str, dict] = {}
  for _ in range(args.repeats):
    for run in args.runs:
      command = [sys.executable, __file__, "--single", run, "--batch-size", str(args.batch_size)]
      if args.image_size:
        command += ["--image-size", str(args.image_size)]
      output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
      result = json.loads(output.strip().splitlines()[-1])
      result["load_after"] = round(os.getloadavg()[0], 2)
      print(json.dumps(result), flush=True)
      if run not in best or result["compile_s"] < best[run]["compile_s"]:
        best[run] = result
  results = [best[run] for run in args.runs]
  print("fastest of each:")
  for result in results:
    print(f"  {result['model']:>18} {result['variant']:<14} trace+lower {result['trace_lower_s']:6.2f} s"
          f"  compile {result['compile_s']:6.2f} s")
  by_run = {f"{r['model']}:{r['variant']}": r for r in results}
  if "resnet152:unrolled" in by_run and "resnet152:scanned" in by_run:
    unrolled, scanned = by_run["resnet152:unrolled"], by_run["resnet152:scanned"]
    print(f"resnet152 compile speed-up, scanned vs unrolled: "
          f"{unrolled['compile_s'] / scanned['compile_s']:.1f}x (compile), "
          f"{(unrolled['compile_s'] + unrolled['trace_lower_s']) / (scanned['compile_s'] + scanned['trace_lower_s']):.1f}x "
          f"(trace + compile)")


if __name__ == "__main__":
  main()
