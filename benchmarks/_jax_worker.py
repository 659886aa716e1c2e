"""The JAX side of the train-step benchmark: one model, one configuration.

Builds the registered model, the project's train state and its jitted train
step (`cnnjax.train.steps.train_step`), places one synthetic batch on the
device once, compiles ahead of time (the compile time is lower + compile),
and then times steps when the parent asks. `train_step="minimal"` times a
bare forward + backward + optax SGD-momentum + weight-decay step instead,
which shows what the real step's extras (metrics, non-finite guards) cost.

The worker process has applied `cnnjax.xla_cpu.configure_process()` (train.py's
process settings; variants switch them off) and passes the model the parts
train.py's `create_model` would (`cnnjax.models.cpu.parts()` on the CPU
backend; see benchmarks/_variants.py). Imports jax, flax, optax and cnnjax
only; never TensorFlow or ml_collections.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from benchmarks import _common
from benchmarks import _variants

LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


def _optimizer_settings():
  """config.optimizer for plain SGD + momentum + weight decay on the kernels."""
  from cnnjax.train import optim  # pylint: disable=import-outside-toplevel
  return optim.OptimizerSettings(learning_rate=LEARNING_RATE, momentum=MOMENTUM,
                                 weight_decay=WEIGHT_DECAY, weight_decay_mask="kernels")


# Copies of cnnjax.data's IMAGENET_MEAN_RGB / IMAGENET_STD_RGB and
# augment.PHOTOMETRIC_DEFAULTS (cnnjax.data imports TensorFlow, which the
# benchmark must not); tests/train/test_device_input.py checks they agree.
_IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
_IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
_PHOTOMETRIC_STRENGTHS = {"brightness": 32.0, "contrast": 0.5, "saturation": 0.5, "hue": 0.2}


def _real_train_step(model, batch_size: int, image_shape, device_photometric: bool = False):
  """(jitted step, state) of cnnjax.train: the step `train.py` runs.

  device_photometric: the step distorts and normalises uint8 batches (the
  Inception preset's strengths), as with augment_kwargs photometric="device".
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from cnnjax.train import optim, state as state_lib, steps  # pylint: disable=import-outside-toplevel
  from cnnjax.preprocessing.device import DeviceInput, Photometric  # pylint: disable=import-outside-toplevel

  tx = optim.create_optimizer(_optimizer_settings(), batch_size)
  photometric = None
  if device_photometric:
    photometric = DeviceInput(mean=_IMAGENET_MEAN_RGB, std=_IMAGENET_STD_RGB,
                              photometric=Photometric(**_PHOTOMETRIC_STRENGTHS))
  rules = state_lib.StepRules(learning_rate_fn=optax.constant_schedule(LEARNING_RATE),
                                device_input=photometric)
  sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  init = jax.jit(lambda rng: state_lib.init_train_state(model, tx, rules, rng, sample))
  state = init(jax.random.PRNGKey(0))
  return steps.train_step, state


def _minimal_train_step(model, batch_size: int, image_shape):
  """(jitted step, state): forward + backward + optax SGD-momentum + masked weight decay."""
  del batch_size
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  def decay_mask(params):
    return jax.tree_util.tree_map(lambda leaf: leaf.ndim > 1, params)

  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY, decay_mask),
                   optax.sgd(LEARNING_RATE, momentum=MOMENTUM))

  def init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng, "dropout": dropout_rng},
                           jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables["params"]
    return {"params": params, "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}

  def step(state, batch):
    dropout_rng = jax.random.fold_in(state["rng"], state["step"])

    def loss_fn(params):
      variables = {"params": params}
      if state["batch_stats"]:
        variables["batch_stats"] = state["batch_stats"]
      (logits, feats), new_model_state = model.apply(
          variables, batch["image"], train=True, features=True, rngs={"dropout": dropout_rng},
          mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch["label"]).mean()
      for aux_logits in feats.get("aux_logits", ()) or ():
        loss = loss + 0.3 * optax.softmax_cross_entropy_with_integer_labels(
            aux_logits.astype(jnp.float32), batch["label"]).mean()
      return loss, new_model_state

    (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates),
                 "batch_stats": new_model_state.get("batch_stats", state["batch_stats"]),
                 "opt_state": opt_state, "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, {"loss": loss}

  return jax.jit(step, donate_argnums=(0,)), jax.jit(init)(jax.random.PRNGKey(0))


def numerics_arrays(jax, model, params, batch_stats, batch) -> dict[str, np.ndarray]:
  """Loss, logits, gradients and new BatchNorm statistics of one training-mode
  forward + backward pass (cross-entropy of the main logits), as numpy arrays."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  def loss_fn(params, batch):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    (logits, _), new_state = model.apply(variables, batch["image"], train=True, features=True,
                                         rngs={"dropout": jax.random.PRNGKey(1)},
                                         mutable=["batch_stats"])
    wide = jnp.promote_types(logits.dtype, jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(wide), batch["label"]).mean()
    return loss, (logits, new_state.get("batch_stats", {}))

  (loss, (logits, new_stats)), grads = jax.jit(
      jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
  def host(leaf):  # float64 stays float64; bfloat16 and float32 are saved as float32
    return np.asarray(leaf, np.float64 if leaf.dtype == jnp.float64 else np.float32)

  arrays = {"loss": host(loss), "logits": host(logits)}
  for prefix, tree in (("grad", grads), ("batch_stats", new_stats)):
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      arrays[prefix + ":" + jax.tree_util.keystr(key_path)] = host(leaf)
  return arrays


class Float64Reference:
  """The numerics of a variant's initial state recomputed in float64.

  Enables x64, makes every explicit float32 inside cnnjax.models float64
  (BatchNorm statistics, pooling, logits), loads the variables and batch the
  float32 worker saved, and writes the same arrays. The distance of the
  float32 default from this reference is the yardstick for "same results":
  a variant passes when it is no further from float64 than the default is.
  """

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec

  def setup(self) -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import cnnjax.models  # pylint: disable=import-outside-toplevel
    from cnnjax import models  # pylint: disable=import-outside-toplevel

    class Float64Namespace:
      """jax.numpy, except that float32 means float64."""

      def __getattr__(self, name):
        return jnp.float64 if name == "float32" else getattr(jnp, name)

    for module in list(sys.modules.values()):
      if getattr(module, "__name__", "").startswith("cnnjax.models") and hasattr(module, "jnp"):
        module.jnp = Float64Namespace()
    del cnnjax
    parts = _variants.model_parts(self.spec.get("patches") or [], jax.default_backend())
    saved = np.load(self.spec["numerics_source"])
    model = models.create(self.spec["model"], dtype=jnp.float64, param_dtype=jnp.float64,
                          **parts, **dict(self.spec.get("model_kwargs") or {}))

    def rebuild(prefix):
      leaves = {k[len(prefix) + 1:]: v for k, v in saved.items() if k.startswith(prefix + ":")}
      tree: dict[str, Any] = {}
      for key, value in leaves.items():
        node = tree
        parts = [part.strip("'") for part in key.strip("[]").split("][")]
        for part in parts[:-1]:
          node = node.setdefault(part, {})
        node[parts[-1]] = jnp.asarray(value, jnp.float64)
      return tree

    size, batch_size = self.spec["image_size"], self.spec["batch_size"]
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch_size, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, model.num_classes, size=(batch_size,), dtype=np.int32)
    batch = {"image": jnp.asarray(images, jnp.float64), "label": jnp.asarray(labels)}
    arrays = numerics_arrays(jax, model, rebuild("init_params"), rebuild("init_batch_stats"),
                             batch)
    np.savez(self.spec["numerics_path"], **arrays)
    return {"framework": "jax", "numerics": {"path": self.spec["numerics_path"]}}

  def finish(self) -> dict[str, Any]:
    return {}


def measure_matmul_flops(dtype_name: str, platform: str) -> float:
  """Best FLOP/s of a square matmul in `dtype_name` on the default device.

  On a CPU there is no data sheet figure to divide by, so MFU is relative
  to what XLA's own matmul reaches on this machine in this dtype.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  n = 2048 if platform == "cpu" else 8192
  dtype = jnp.dtype(dtype_name)
  a = jax.device_put(jnp.ones((n, n), dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


class JaxRunner:
  """Setup, timed steps and final report of one JAX configuration."""

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec

  def setup(self) -> dict[str, Any]:
    spec = self.spec
    applied_patches = _variants.check(spec.get("patches") or [])
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from cnnjax import models  # pylint: disable=import-outside-toplevel
    rss_after_import = _common.current_rss_bytes()
    self._jax = jax
    # What train.py's create_model passes (config.model.cpu_kernels="auto"), as the variants edit it.
    parts = _variants.model_parts(applied_patches, jax.default_backend())

    device = jax.devices()[0]
    batch_size, size = spec["batch_size"], spec["image_size"]
    dtype = jnp.dtype(spec["dtype"])
    model_kwargs = dict(spec.get("model_kwargs") or {})
    model = models.create(spec["model"], dtype=dtype, param_dtype=jnp.float32,
                          **{**parts, **model_kwargs})
    profile_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("scan_blocks", "remat")}
    macs = models.profile(spec["model"], image_size=size, **profile_kwargs).macs

    rng = np.random.default_rng(0)
    image_shape = (size, size, 3)
    device_photometric = os.environ.get(_variants.DEVICE_PHOTOMETRIC_ENV) == "on"
    if device_photometric:
      if spec["train_step"] != "real" or spec.get("numerics_path"):
        raise ValueError("the device_photometric variant needs the real train step and no "
                         "--check_numerics (which compares the model on float batches)")
      images = rng.integers(0, 256, (batch_size,) + image_shape, dtype=np.uint8)
    else:
      images = rng.standard_normal((batch_size,) + image_shape, dtype=np.float32)
    labels = rng.integers(0, model.num_classes, size=(batch_size,), dtype=np.int32)
    # Placed once, outside the timing loop: the benchmark times the step, not the transfer.
    self.batch = jax.device_put({"image": images, "label": labels}, device)

    if spec["train_step"] == "real":
      step, state = _real_train_step(model, batch_size, image_shape, device_photometric)
      step_name = "cnnjax.train.steps.train_step"
      if device_photometric:
        step_name += " (uint8 batch, photometric distortions + normalisation in the step)"
    else:
      step, state = _minimal_train_step(model, batch_size, image_shape)
      step_name = "minimal (forward + backward + optax sgd momentum + weight decay)"

    numerics = None
    if spec.get("numerics_path"):
      numerics = self._dump_numerics(model, state, spec["numerics_path"])

    start = time.perf_counter()
    lowered = step.lower(state, self.batch)
    lowered_at = time.perf_counter()
    self.compiled = lowered.compile()
    compiled_at = time.perf_counter()

    start_first = time.perf_counter()
    self.state, metrics = self.compiled(state, self.batch)
    jax.block_until_ready((self.state, metrics))
    first_step_s = time.perf_counter() - start_first
    loss = float(metrics["loss"])
    warmup_s = [wall for wall, _ in self.time_steps(spec["warmup"])]

    peak_flops, peak_source = spec.get("peak_flops"), "given (--peak_flops)"
    if not peak_flops:
      if device.platform == "cpu":
        peak_flops = measure_matmul_flops(spec["dtype"], device.platform)
        peak_source = f"measured: best {spec['dtype']} 2048^3 matmul under jit on this CPU"
      else:
        peak_flops, peak_source = _common.lookup_peak_flops(device.device_kind, spec["dtype"])
    return {
        "framework": "jax",
        "device": f"{device.platform}: {device.device_kind}",
        "platform": device.platform,
        "train_step": step_name,
        "compile_s": compiled_at - start,
        "lower_s": lowered_at - start,
        "xla_compile_s": compiled_at - lowered_at,
        "first_step_s": first_step_s,
        "warmup_step_s": warmup_s,
        "first_loss": loss,
        "macs_per_image": macs,
        "peak_flops": peak_flops,
        "peak_flops_source": peak_source,
        "num_classes": model.num_classes,
        "patches": applied_patches,
        "model_parts": {key: getattr(value, "__module__", "") + "." + value.__qualname__
                        for key, value in parts.items()},
        "numerics": numerics,
        "rss_after_import_bytes": rss_after_import,
        "versions": {"jax": jax.__version__, "jaxlib": _jaxlib_version()},
    }

  def _dump_numerics(self, model, state, path: str) -> dict[str, Any]:
    """Writes logits, loss, gradients and new BatchNorm statistics of the initial
    state on this batch to `path` (.npz), with the initial variables, so the
    parent can compare XLA flags and model variants with the default and with a
    float64 reference run on the same variables."""
    params = state.params if hasattr(state, "params") else state["params"]
    batch_stats = state.batch_stats if hasattr(state, "batch_stats") else state["batch_stats"]
    arrays = numerics_arrays(self._jax, model, params, batch_stats, self.batch)
    for prefix, tree in (("init_params", params), ("init_batch_stats", batch_stats)):
      for key_path, leaf in self._jax.tree_util.tree_flatten_with_path(tree)[0]:
        arrays[prefix + ":" + self._jax.tree_util.keystr(key_path)] = np.asarray(leaf)
    np.savez(path, **arrays)
    return {"path": path, "arrays": len(arrays)}

  def time_steps(self, count: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of `count` steps."""
    jax = self._jax
    seconds = []
    for _ in range(count):
      start, cpu_start = time.perf_counter(), time.process_time()
      self.state, metrics = self.compiled(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
      seconds.append((time.perf_counter() - start, time.process_time() - cpu_start))
    return seconds

  def finish(self) -> dict[str, Any]:
    jax = self._jax
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
      return {"peak_memory_bytes": int(stats["peak_bytes_in_use"]),
              "memory_kind": "device peak_bytes_in_use"}
    return {"peak_memory_bytes": _common.peak_rss_bytes(), "memory_kind": "host peak RSS"}


def _jaxlib_version() -> str:
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return "unknown"
