r"""The rows of benchmarks/gpu_check.sh: what one H100/H200 does with cnnjax.

    python3 -m benchmarks.gpu_check preflight [--smoke]
    python3 -m benchmarks.gpu_check row NAME --output_dir DIR [--smoke]
    python3 -m benchmarks.gpu_check table --output_dir DIR --rows a,b,c [--smoke]

Each row runs in its own process (fresh device memory statistics, its own
time limit, set by the shell script) and writes DIR/rows/NAME.json:

  train_step      ResNet-50 bf16 at batch 256 per GPU, 224 px: the step the
                  loop runs (`steps.jit_for_mesh`), on a device-resident
                  batch; images/s, MFU (3 x 2 x MACs per image x images/s
                  over the data-sheet dense bf16 peak), peak device memory.
  compile_counts  the same step fed a fresh batch every step, with
                  validation and the plateau update in between: backend
                  compilations per step function (each must be 1).
  checkpoint      orbax async save and restore (the project's
                  CheckpointStore) of a ResNet-50 train state on the GPU:
                  seconds, bytes, and restored == saved.
  host_to_device  jax.device_put of a 256x224x224x3 batch, float32 and
                  uint8: GB/s and images/s.
  loop_b256, loop_b32
                  the whole loop on device-resident synthetic batches
                  against the bare step (`benchmarks/loop_overhead.py`).

`--smoke` runs every row with a tiny CIFAR ResNet at 16 px on any machine
(the same code, small sizes); without it a row refuses to run unless JAX
sees a GPU. Imports jax, flax, optax, orbax and cnnjax's TensorFlow-free
modules only; the loop rows run `cnnjax.train.run` on the "synthetic"
dataset, which needs neither TensorFlow nor ml_collections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

from benchmarks import _common

ROWS = ("train_step", "compile_counts", "checkpoint", "host_to_device", "device_input", "loop_b256",
        "loop_b32")
GPU_MISSING_EXIT = 2
IMPORT_MISSING_EXIT = 3
GIB = 1024**3

# The settings of the real check (one H100/H200) and of the smoke mode.
REAL = {
    "model": "resnet50", "model_kwargs": {}, "num_classes": 1000, "image_size": 224,
    "batch_per_device": 256, "dtype": "bfloat16", "warmup": 3, "steps": 20,
    "compile_steps": 8, "transfer_batch": 256, "transfer_repeats": 10,
    "loop_batches": {"loop_b256": 256, "loop_b32": 32}, "loop_steps": 60,
}
SMOKE = {
    "model": "cifar_resnet20", "model_kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
    "num_classes": 10, "image_size": 16, "batch_per_device": 4, "dtype": "bfloat16", "warmup": 1,
    "steps": 2, "compile_steps": 4, "transfer_batch": 8, "transfer_repeats": 3,
    "loop_batches": {"loop_b256": 8, "loop_b32": 4}, "loop_steps": 12,
}

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class GpuMissingError(RuntimeError):
  """The real check was started where JAX sees no GPU."""


class CompileCounter:
  """Counts backend compilations per jitted function while active.

  Listens to JAX's '/jax/core/compile/backend_compile_duration' event,
  which fires once per executable JAX builds for a (function, input
  shapes/dtypes/shardings) it has not built in this process: compiled by
  XLA, or read from the persistent compilation cache. A second event for
  the same function means a recompilation.

      with CompileCounter() as compiles:
        ...
      compiles.count("train_step_fn")
  """

  def __init__(self):
    self.names: list[str] = []
    self.persistent_cache_hits = 0  # of those, read from the persistent compilation cache

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration
    if event == BACKEND_COMPILE_EVENT:
      self.names.append(str(kwargs.get("fun_name", "")))

  def _listen_hits(self, event: str, **kwargs) -> None:
    del kwargs
    if event == CACHE_HIT_EVENT:
      self.persistent_cache_hits += 1

  def __enter__(self) -> CompileCounter:
    import jax.monitoring  # pylint: disable=import-outside-toplevel
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    jax.monitoring.register_event_listener(self._listen_hits)
    return self

  def __exit__(self, *exc) -> None:
    import jax.monitoring  # pylint: disable=import-outside-toplevel
    jax.monitoring.unregister_event_duration_listener(self._listen)
    jax.monitoring.unregister_event_listener(self._listen_hits)

  def count(self, function_name: str) -> int:
    """Compilations of the function named `function_name` (recorded as 'jit(<name>)')."""
    return sum(name in (function_name, f"jit_{function_name}", f"jit({function_name})")
               for name in self.names)


def run_config(p: dict[str, Any], batch_size: int, schedule: str):
  """The Settings setup and optim read (ml_collections is not needed): SGD + momentum +
  weight decay, ResNet-style, the base config's defaults otherwise."""
  from cnnjax.train import checks  # pylint: disable=import-outside-toplevel
  from cnnjax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.defaults()
  # cpu_kernels "off": the model's default parts on every backend, so the smoke run on
  # a CPU builds the program a GPU runs, not the CPU-tuned one.
  c["model"].update(name=p["model"], kwargs=dict(p["model_kwargs"]),
                    num_classes=p["num_classes"], dtype=p["dtype"], cpu_kernels="off")
  c["schedule"]["name"] = schedule
  c["schedule"]["plateau"]["patience"] = 1
  c["eval"]["every_steps"] = 100  # plateau follows validations (the rows feed them by hand)
  c["run"].update(batch_size=batch_size, num_steps=10_000)
  return checks.build(config_lib.Settings, c, "")


class Training:
  """Model, optimiser, state and the loop's jitted steps for one setting, as `run` builds them."""

  # The plateau schedule in every row: the same train-step program for the
  # train_step and compile_counts rows, so the second loads the first's
  # executable from the run's persistent compilation cache.
  def __init__(self, p: dict[str, Any], *, schedule: str = "plateau"):
    import jax  # pylint: disable=import-outside-toplevel
    from cnnjax import sharding  # pylint: disable=import-outside-toplevel
    from cnnjax.train import optim, setup, steps  # pylint: disable=import-outside-toplevel
    self.p = p
    self.mesh = sharding.make_mesh()
    self.num_devices = jax.device_count()
    self.batch_size = p["batch_per_device"] * self.num_devices
    s = run_config(p, self.batch_size, schedule)
    self.model = setup.create_model(s.model, batch_size=self.batch_size,
                                    num_devices=self.num_devices)
    tx = optim.create_optimizer(s.optimizer, self.batch_size)
    rules = setup.step_rules(s.optimizer, s.schedule, s.loss, batch_size=self.batch_size,
                             steps_per_epoch=100, total_steps=10_000)
    self.image_shape = (p["image_size"], p["image_size"], 3)
    self.init = setup.state_initializer(self.model, tx, rules, self.image_shape)
    self.train, self.evaluate, self.after_validation = steps.jit_for_mesh(self.mesh)

  def new_state(self, seed: int = 0):
    from cnnjax.train import setup  # pylint: disable=import-outside-toplevel
    return setup.create_state(self.init, self.mesh, seed)

  def host_batch(self, seed: int, *, mask: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {"image": rng.standard_normal((self.batch_size,) + self.image_shape, np.float32),
             "label": rng.integers(0, self.p["num_classes"], self.batch_size).astype(np.int32)}
    if mask:
      batch["mask"] = np.ones((self.batch_size,), np.bool_)
    return batch

  def device_batch(self, seed: int, *, mask: bool = False):
    from cnnjax import sharding  # pylint: disable=import-outside-toplevel
    return sharding.global_batch(self.host_batch(seed, mask=mask), self.mesh)


# --------------------------------------------------------------------- rows


def _peak_device_memory() -> tuple[int | None, str]:
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return None, f"no device memory statistics on {jax.devices()[0].platform}"


def _peak_flops(device, dtype: str) -> tuple[float | None, str]:
  if os.environ.get("PEAK_FLOPS"):
    return float(os.environ["PEAK_FLOPS"]), "given (PEAK_FLOPS)"
  if device.platform == "cpu":
    return None, "no data-sheet peak for a CPU"
  return _common.lookup_peak_flops(device.device_kind, dtype)


def row_train_step(p: dict[str, Any]) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  t = Training(p)
  state = t.new_state()
  batch = t.device_batch(0)  # placed once: the row times the step, not the transfer
  started = time.perf_counter()
  state, metrics = t.train(state, batch)
  jax.block_until_ready((state, metrics))
  first_step_s = time.perf_counter() - started
  for _ in range(p["warmup"]):
    state, metrics = t.train(state, batch)
  jax.block_until_ready((state, metrics))
  started = time.perf_counter()
  for _ in range(p["steps"]):  # dispatched back to back, as the loop does
    state, metrics = t.train(state, batch)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - started
  images_per_s = p["steps"] * t.batch_size / seconds
  macs = models.profile(p["model"], image_size=p["image_size"], **p["model_kwargs"]).macs
  device = jax.devices()[0]
  peak, peak_source = _peak_flops(device, p["dtype"])
  mfu = _common.mfu(macs, images_per_s / t.num_devices, peak)
  memory, memory_kind = _peak_device_memory()
  loss = float(metrics["loss"])
  ok = np.isfinite(loss) and int(metrics["nonfinite"]) == 0
  mfu_text = f"MFU {mfu:.3f}" if mfu is not None else f"MFU n/a ({peak_source})"
  memory_text = f"peak memory {memory / GIB:.2f} GiB" if memory is not None else memory_kind
  return {
      "status": "ok" if ok else "fail", "reason": None if ok else f"loss {loss}",
      "summary": (f"{p['model']} {p['dtype']} batch {p['batch_per_device']}/GPU "
                  f"{p['image_size']}px: {images_per_s:.0f} img/s, {mfu_text}, {memory_text}, "
                  f"first step (compile) {first_step_s:.1f} s"),
      "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / t.num_devices,
      "step_s": seconds / p["steps"], "steps_timed": p["steps"], "first_step_s": first_step_s,
      "macs_per_image": macs, "flops_per_image": 3 * 2 * macs, "peak_flops": peak,
      "peak_flops_source": peak_source, "mfu": mfu, "peak_memory_bytes": memory,
      "memory_kind": memory_kind, "loss": loss, "batch_size": t.batch_size,
  }


def row_compile_counts(p: dict[str, Any]) -> dict[str, Any]:
  """Train steps on a fresh host batch each (as the loop feeds them), validation
  twice, and the plateau update after each: every step function must compile once."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cnnjax.scoring import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  with CompileCounter() as compiles:
    t = Training(p)
    state = t.new_state()
    eval_batch = t.device_batch(10_000, mask=True)
    validations = 0
    for step in range(1, p["compile_steps"] + 1):
      state, metrics = t.train(state, t.device_batch(step))
      if step % (p["compile_steps"] // 2) == 0:
        # As the loop: summed metrics fetched to the host, the error fed back as float32.
        sums = metrics_lib.to_host(t.evaluate(state, eval_batch))
        error = metrics_lib.averages_from_sums(sums)["top1_error"]
        state = t.after_validation(state, jnp.float32(error))
        validations += 1
    jax.block_until_ready((state, metrics))
  counts = {name: compiles.count(name) for name in
            ("train_step_fn", "eval_step_fn", "after_validation_fn")}
  cache_sizes = {"train_step_fn": t.train._cache_size(),  # pylint: disable=protected-access
                 "eval_step_fn": t.evaluate._cache_size(),  # pylint: disable=protected-access
                 "after_validation_fn": t.after_validation._cache_size()}  # pylint: disable=protected-access
  bad = {name: n for name, n in counts.items() if n != 1}
  bad.update({f"{name} (jit cache entries)": n for name, n in cache_sizes.items() if n != 1})
  return {
      "status": "fail" if bad else "ok",
      "reason": f"compiled other than once: {bad}" if bad else None,
      "summary": (f"{p['compile_steps']} train steps (fresh batch each), {validations} "
                  "validations + plateau updates: compilations " +
                  ", ".join(f"{name} {n}" for name, n in counts.items()) +
                  f" ({compiles.persistent_cache_hits} of this row's builds read from the "
                  "persistent cache)"),
      "backend_compilations": counts, "jit_cache_entries": cache_sizes,
      "all_compilations": compiles.names,
      "persistent_cache_hits": compiles.persistent_cache_hits, "train_steps": p["compile_steps"],
      "validations": validations,
  }


def row_checkpoint(p: dict[str, Any]) -> dict[str, Any]:
  """Async save (CheckpointStore, as the loop) and restore of a train state on the device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  from cnnjax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  t = Training(p)
  state = t.new_state()

  # Every floating leaf gets distinct values (momentum and BatchNorm statistics
  # start as zeros and ones), so restored == saved compares information. Not
  # jax.random: a normal draw per leaf takes XLA:CPU most of a minute to compile.
  def scramble(arrays):
    leaves, treedef = jax.tree_util.tree_flatten(arrays)
    leaves = [x + jnp.sin(jnp.arange(x.size, dtype=jnp.float32) * (i + 1.5)).reshape(x.shape)
              .astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
              for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  arrays = jax.jit(scramble, out_shardings=sharding.replicated(t.mesh))(state.arrays())
  jax.block_until_ready(arrays)
  num_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(arrays))
  workdir = tempfile.mkdtemp(prefix="gpu_check_ckpt_")
  try:
    store = ckpt_lib.CheckpointStore(workdir, keep=1, async_save=True)
    started = time.perf_counter()
    store.save(arrays, {"step": 1})
    returned_s = time.perf_counter() - started
    store.wait()
    on_disk_s = time.perf_counter() - started
    abstract = sharding.abstract_replicated(t.init, t.mesh, jax.random.PRNGKey(0)).arrays()
    started = time.perf_counter()
    restored, _ = store.restore(abstract, 1)
    jax.block_until_ready(restored)
    restore_s = time.perf_counter() - started
    store.close()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  saved_leaves, restored_leaves = (jax.tree_util.tree_leaves(t) for t in (arrays, restored))
  same_layout = (jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(arrays)
                 and all(a.dtype == b.dtype and a.shape == b.shape
                         and a.sharding.is_equivalent_to(b.sharding, a.ndim)
                         for a, b in zip(saved_leaves, restored_leaves)))
  # One program compares every leaf (a comparison per leaf would compile per shape).
  all_equal = jax.jit(lambda xs, ys: jnp.all(jnp.stack(
      [jnp.array_equal(x, y) for x, y in zip(xs, ys)])))
  equal = same_layout and bool(all_equal(saved_leaves, restored_leaves))
  on_device = all(d.platform == jax.devices()[0].platform
                  for x in jax.tree_util.tree_leaves(restored) for d in x.devices())
  ok = equal and on_device
  return {
      "status": "ok" if ok else "fail",
      "reason": None if ok else f"restored == saved: {equal}, restored onto the device: {on_device}",
      "summary": (f"{p['model']} train state {num_bytes / 1e6:.3g} MB: save returns in "
                  f"{returned_s:.2f} s, on disk after {on_disk_s:.2f} s, restore {restore_s:.2f} s, "
                  f"restored == saved: {equal}"),
      "state_bytes": num_bytes, "save_returned_s": returned_s, "save_on_disk_s": on_disk_s,
      "restore_s": restore_s, "restored_equals_saved": equal, "restored_on_device": on_device,
  }


def row_host_to_device(p: dict[str, Any]) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  shape = (p["transfer_batch"], p["image_size"], p["image_size"], 3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  result: dict[str, Any] = {"shape": list(shape), "repeats": p["transfer_repeats"]}
  for name, host in (("float32", images.astype(np.float32)), ("uint8", images)):
    seconds = []
    for repeat in range(p["transfer_repeats"] + 1):  # the first one warms up
      started = time.perf_counter()
      on_device = jax.device_put(host, device)
      on_device.block_until_ready()
      if repeat:
        seconds.append(time.perf_counter() - started)
      on_device.delete()
    median = statistics.median(seconds)
    result[name] = {"bytes": host.nbytes, "median_s": median, "min_s": min(seconds),
                    "gb_per_s": host.nbytes / median / 1e9, "images_per_s": shape[0] / median}
  ratio = result["uint8"]["images_per_s"] / result["float32"]["images_per_s"]
  result.update({
      "status": "ok", "reason": None, "uint8_over_float32_images_per_s": ratio,
      "summary": (f"{shape[0]}x{shape[1]}x{shape[2]}x3: float32 "
                  f"{result['float32']['gb_per_s']:.2f} GB/s "
                  f"({result['float32']['images_per_s']:.0f} img/s), uint8 "
                  f"{result['uint8']['gb_per_s']:.2f} GB/s ({result['uint8']['images_per_s']:.0f} "
                  f"img/s): uint8 ships {ratio:.2f}x the images"),
  })
  return result


def row_device_input(p: dict[str, Any]) -> dict[str, Any]:
  """The step's share of the Inception input (DeviceInput.train with resize="device"):
  crop resize + flip, photometric distortions, normalisation, on uint8 canvases."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cnnjax.preprocessing.device import DeviceInput, Photometric  # pylint: disable=import-outside-toplevel
  size, batch = p["image_size"], p["transfer_batch"]
  rng = np.random.default_rng(0)
  finish = DeviceInput(mean=np.full(3, 120.0, np.float32), std=np.full(3, 60.0, np.float32),
                       photometric=Photometric(32.0, 0.5, 0.5, 0.2), resize=size)
  images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  sides = rng.integers(size // 2, size + 1, (batch, 2))
  crops = jnp.asarray(np.concatenate([sides, rng.integers(0, 2, (batch, 1))], 1), jnp.int32)
  work = jax.jit(lambda x, c, step: finish.train(x, jax.random.key(0), step, None, c).sum())
  work(images, crops, 0).block_until_ready()
  seconds = []
  for step in range(p["transfer_repeats"]):
    started = time.perf_counter()
    work(images, crops, step + 1).block_until_ready()
    seconds.append(time.perf_counter() - started)
  median = statistics.median(seconds)
  return {"status": "ok", "reason": None, "batch": batch, "median_s": median,
          "images_per_s": batch / median,
          "summary": (f"{batch}x{size}x{size} uint8 canvases -> resize, flip, distortions, "
                      f"normalisation: {batch / median:.0f} img/s ({1e3 * median / batch:.4f} ms "
                      "per image)")}


def _synthetic_dataset() -> str:
  """The dataset name of the loop's device-resident synthetic batches."""
  try:
    from cnnjax.train import inputs  # pylint: disable=import-outside-toplevel
    return inputs.SYNTHETIC_DATASET
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        "the library has no synthetic dataset (cnnjax.train.inputs.SYNTHETIC_DATASET): the loop "
        "rows need device-resident synthetic batches, not tf.data") from e


def row_loop(p: dict[str, Any], name: str) -> dict[str, Any]:
  try:
    from benchmarks import loop_overhead  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise RuntimeError(f"benchmarks/loop_overhead.py is missing or broken: {e}") from e
  import jax  # pylint: disable=import-outside-toplevel
  per_device = p["loop_batches"][name]
  dataset = _synthetic_dataset()
  measured = loop_overhead.measure(
      p["model"], batch_size=per_device * jax.device_count(), image_size=p["image_size"],
      steps=p["loop_steps"], model_kwargs=dict(p["model_kwargs"]), dtype=p["dtype"],
      dataset=dataset)
  missing = [k for k in ("bare_images_per_s", "loop_images_per_s", "ratio") if k not in measured]
  if missing:
    raise RuntimeError(f"loop_overhead.measure returned no {missing}")
  ratio = float(measured["ratio"])
  return {
      **measured, "status": "ok", "reason": None, "dataset": dataset,
      "summary": (f"{p['model']} {p['dtype']} batch {per_device}/GPU, {dataset}: loop "
                  f"{measured['loop_images_per_s']:.0f} img/s, bare step "
                  f"{measured['bare_images_per_s']:.0f} img/s, ratio {ratio:.3f}"),
  }


def require_gpu() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "gpu":
    raise GpuMissingError(
        f"JAX sees no GPU (backend {jax.default_backend()!r}, devices {jax.devices()}): this "
        "check measures an H100/H200. Install the CUDA build of jax (pip install "
        "'jax[cuda12]'), check nvidia-smi and JAX_PLATFORMS, or run the CPU smoke mode "
        "(--smoke, or GPU_CHECK_SMOKE=1)")


def run_row(name: str, smoke: bool) -> dict[str, Any]:
  p = SMOKE if smoke else REAL
  if not smoke:
    require_gpu()
  if name == "train_step":
    result = row_train_step(p)
  elif name == "compile_counts":
    result = row_compile_counts(p)
  elif name == "checkpoint":
    result = row_checkpoint(p)
  elif name == "host_to_device":
    result = row_host_to_device(p)
  elif name == "device_input":
    result = row_device_input(p)
  elif name in p["loop_batches"]:
    result = row_loop(p, name)
  else:
    raise ValueError(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  result["device"] = (f"{device.platform}: {device.device_kind} x{jax.device_count()}, "
                      f"jax {jax.__version__}")
  tf_imported = "tensorflow" in sys.modules
  result["tensorflow_imported"] = tf_imported
  result["ml_collections_imported"] = "ml_collections" in sys.modules
  if tf_imported and result["status"] == "ok":
    result.update(status="fail", reason="TensorFlow was imported (the GPU host has none)")
  return result


def preflight(smoke: bool) -> int:
  """0 when jax, flax, optax and orbax import and (unless smoke) JAX sees a GPU."""
  missing = []
  for module in ("jax", "flax", "optax", "orbax.checkpoint"):
    try:
      __import__(module)
    except ImportError as e:
      missing.append(f"{module} ({e})")
  if missing:
    print(f"gpu_check: cannot import {', '.join(missing)}; install jax, flax, optax and "
          "orbax-checkpoint", file=sys.stderr)
    return IMPORT_MISSING_EXIT
  import jax  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
        f"backend {jax.default_backend()}; devices: "
        + ", ".join(f"{d.platform}:{d.device_kind}" for d in devices))
  try:
    require_gpu()
  except GpuMissingError as e:
    if not smoke:
      print(f"gpu_check: {e}", file=sys.stderr)
      return GPU_MISSING_EXIT
    print("smoke mode: tiny sizes on whatever JAX sees; no figure of this run means anything")
  return 0


def _row_cell(record: dict[str, Any]) -> str:
  text = record.get("summary") or record.get("reason") or ""
  if record.get("status") != "ok" and record.get("reason") and record.get("summary"):
    text += f" ({record['reason']})"
  return text.replace("|", "/").replace("\n", " ")


def table(output_dir: str, rows: list[str], smoke: bool) -> int:
  """Writes gpu_check.md and gpu_check.json; 1 when any row is missing or not ok."""
  records = {}
  for name in rows:
    path = os.path.join(output_dir, "rows", f"{name}.json")
    exit_path = os.path.join(output_dir, "rows", f"{name}.exit")
    exit_code = None
    if os.path.exists(exit_path):
      with open(exit_path, encoding="ascii") as f:
        exit_code = int(f.read().strip() or -1)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        record = json.load(f)
    else:
      why = "timed out" if exit_code in (124, 137) else f"exited {exit_code} without a result"
      record = {"status": "error", "reason": why}
    record["exit_code"] = exit_code
    if exit_code not in (0, None) and record.get("status") == "ok":
      record.update(status="error", reason=f"exit code {exit_code}")
    records[name] = record
  # The table runs without JAX (it must not wait for a busy GPU): the rows name their device.
  device = next((r["device"] for r in records.values() if r.get("device")), "unknown device")
  when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  lines = [f"gpu_check ({'SMOKE: tiny sizes' if smoke else 'real'}), {when}, {device}",
           "", "| row | status | result | seconds |", "| --- | --- | --- | --- |"]
  for name, record in records.items():
    seconds = record.get("row_seconds")
    lines.append(f"| {name} | {record['status']} | {_row_cell(record)} | "
                 f"{seconds:.1f} |" if seconds is not None else
                 f"| {name} | {record['status']} | {_row_cell(record)} | - |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(output_dir, "gpu_check.md"), "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.join(output_dir, "gpu_check.json"), "w", encoding="utf-8") as f:
    json.dump({"smoke": smoke, "time": when, "device": device,
               "rows": records}, f, indent=1, default=str)
  print(text)
  failed = [name for name, record in records.items() if record["status"] != "ok"]
  if failed:
    print(f"gpu_check: rows failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
  parser.add_argument("command", choices=("preflight", "row", "table"))
  parser.add_argument("name", nargs="?", help="the row to run (command 'row')")
  parser.add_argument("--output_dir", default=None)
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--smoke", action="store_true",
                      default=os.environ.get("GPU_CHECK_SMOKE", "0") == "1")
  args = parser.parse_args(argv)
  if args.command == "preflight":
    return preflight(args.smoke)
  if not args.output_dir:
    parser.error("--output_dir is required")
  if args.command == "table":
    return table(args.output_dir, [r for r in args.rows.split(",") if r], args.smoke)
  if not args.name:
    parser.error("command 'row' needs a row name: " + ", ".join(ROWS))
  rows_dir = os.path.join(args.output_dir, "rows")
  os.makedirs(rows_dir, exist_ok=True)
  started = time.perf_counter()
  try:
    result = run_row(args.name, args.smoke)
  except GpuMissingError as e:
    print(f"gpu_check: {e}", file=sys.stderr)
    return GPU_MISSING_EXIT
  except Exception as e:  # pylint: disable=broad-except  (the row fails; the table says why)
    traceback.print_exc()
    result = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
  result["row_seconds"] = time.perf_counter() - started
  result["smoke"] = args.smoke
  with open(os.path.join(rows_dir, f"{args.name}.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1, default=str)
  print(f"{args.name}: {result['status']}: {_row_cell(result)}", flush=True)
  return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
  sys.exit(main())
