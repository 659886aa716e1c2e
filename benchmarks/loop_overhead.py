r"""What the training loop adds to the bare train step, in one process.

    python -m benchmarks.loop_overhead                           # cifar_resnet20 x0.25, batch 8 and 32
    python -m benchmarks.loop_overhead --batch_sizes 8 --steps 600 --repeats 2

Two measurements of the same model, batch and process:

* bare: the donated, jitted `train_step_fn` on one device-resident batch, N
  steps dispatched back to back, timed to the last result;
* loop: `cnnjax.train.run(config, workdir)`, the whole loop (input, prefetch,
  metrics, progress bar, checkpoints), its steady images/s read from the
  train rows of metrics.jsonl, the first window (compilation) left out.

The loop runs on `--datasets`: "digits" (the embedded dataset through
tf.data: the loop as users run it) and, where the library has it,
"synthetic" (device-resident batches: the loop alone). The ratio loop/bare
is what the loop costs; on an accelerator it must stay >= 0.95.
`measure()` is also the loop row of benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

DEFAULT_MODEL = "cifar_resnet20"
DEFAULT_MODEL_KWARGS = {"width_multiplier": 0.25}


def _config(model: str, batch_size: int, image_size: int, steps: int, dataset: str,
            model_kwargs: dict[str, Any] | None, dtype: str, log_every: int) -> dict[str, Any]:
  """The quickstart's optimiser and schedule around the given model and batch (nested
  plain dicts: no ml_collections, as on a bare accelerator image)."""
  from cnnjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.defaults()
  c["model"].update(name=model, kwargs=dict(model_kwargs or {}), dtype=dtype,
                    num_classes=10 if dataset == "digits" else 1000)
  c["input"].update(dataset=dataset, image_size=image_size)
  c["eval"].update(batch_size=max(batch_size, 64), num_batches=1)
  c["optimizer"].update(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  c["schedule"].update(name="warmup_cosine", warmup_steps=min(30, steps // 2))
  c["run"].update(batch_size=batch_size, num_steps=steps, log_every_steps=log_every,
                  progress_bar=False, compilation_cache_dir="")
  return c


def bare_images_per_s(config: dict[str, Any], steps: int) -> float:
  """Images/s of the loop's own donated, jitted train step alone (`jit_for_mesh`, the
  same program, so a compilation cache serves both), on one device-resident batch."""
  import jax  # pylint: disable=import-outside-toplevel

  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  from cnnjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from cnnjax.train import inputs, optim, setup  # pylint: disable=import-outside-toplevel
  from cnnjax.train import steps as steps_lib  # pylint: disable=import-outside-toplevel
  s = config_lib.validate(dict(config, input=dict(config["input"],
                                                  dataset=inputs.SYNTHETIC_DATASET)))
  mesh = sharding.make_mesh()
  batch_size, size = s.run.batch_size, s.input.image_size
  model = setup.create_model(s.model, batch_size=batch_size, num_devices=jax.device_count())
  tx = optim.create_optimizer(s.optimizer, batch_size)
  rules = setup.step_rules(s.optimizer, s.schedule, s.loss, batch_size=batch_size,
                           steps_per_epoch=100, total_steps=steps)
  init = setup.state_initializer(model, tx, rules, (size, size, 3))
  state = setup.create_state(init, mesh, s.run.seed)
  batch = next(inputs.open_inputs(s.input, s.eval, mesh, batch_size=batch_size, seed=s.run.seed,
                                  image_size=size, num_classes=s.model.num_classes)
               .train_batches(0))
  train = steps_lib.jit_for_mesh(mesh)[0]
  for _ in range(3):
    state, metrics = train(state, batch)
  jax.block_until_ready((state, metrics))
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = train(state, batch)
  jax.block_until_ready((state, metrics))
  return steps * batch_size / (time.perf_counter() - started)


def loop_images_per_s(config) -> float:
  """Steady images/s of the whole loop (train rows after the first window)."""
  from cnnjax.train import run  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as workdir:
    run(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  rates = [row["images_per_sec"] for row in rows if row.get("split") == "train"]
  if len(rates) < 2:
    raise RuntimeError("the loop logged fewer than two train windows; raise --steps")
  return statistics.median(rates[1:])


def measure(model: str = DEFAULT_MODEL, *, batch_size: int, image_size: int, steps: int,
            model_kwargs: dict[str, Any] | None = None, dtype: str = "float32",
            dataset: str = "digits", log_every: int | None = None) -> dict[str, Any]:
  """{"bare_images_per_s", "loop_images_per_s", "ratio", ...} for one setting."""
  log_every = log_every or max(steps // 6, 1)
  make = lambda: _config(model, batch_size, image_size, steps, dataset, model_kwargs, dtype,
                         log_every)
  loop = loop_images_per_s(make())
  bare = bare_images_per_s(make(), steps)
  return {"model": model, "dataset": dataset, "batch_size": batch_size, "image_size": image_size,
          "dtype": dtype, "steps": steps, "bare_images_per_s": bare, "loop_images_per_s": loop,
          "ratio": loop / bare}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=DEFAULT_MODEL)
  parser.add_argument("--model_kwargs", default=json.dumps(DEFAULT_MODEL_KWARGS))
  parser.add_argument("--batch_sizes", default="8,32")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--datasets", default="digits,synthetic")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args(argv)
  try:
    from cnnjax.train import inputs  # pylint: disable=import-outside-toplevel
    has_synthetic = hasattr(inputs, "SYNTHETIC_DATASET")
  except ImportError:  # older versions of the library: no synthetic dataset
    has_synthetic = False
  rows = []
  for _ in range(args.repeats):
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
      for dataset in args.datasets.split(","):
        if dataset == "synthetic" and not has_synthetic:
          continue
        row = measure(args.model, batch_size=batch_size, image_size=args.image_size,
                      steps=args.steps, model_kwargs=json.loads(args.model_kwargs),
                      dtype=args.dtype, dataset=dataset)
        rows.append(row)
        print(f"{row['model']} batch {batch_size} {dataset}: bare {row['bare_images_per_s']:.0f} "
              f"img/s, loop {row['loop_images_per_s']:.0f} img/s, ratio {row['ratio']:.3f}",
              flush=True)
  print(json.dumps(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
