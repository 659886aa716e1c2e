"""The training loop: the only stateful code of a run.

`run(config, workdir)` validates the config, resumes from the workdir's
latest checkpoint if there is one (or starts fresh, optionally warm-started
from a VGG-A workdir), then alternates jitted train steps with periodic
logging, validation and asynchronous checkpoints, and finally prints the
held-out accuracy. SIGTERM / SIGINT (preemption, Ctrl-C) finish the current
step, save, and return; running the same command again continues exactly
where it stopped.

Outputs in the workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/, best/, profile/ (when `profile_steps` is set) and a LOCK file
while running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax.errors import CheckpointError, CnnjaxError, ConfigError, NonFiniteError
from cnnjax.train import checkpoint as ckpt_lib
from cnnjax.train import config as config_lib
from cnnjax.train import metrics as metrics_lib
from cnnjax import sharding
from cnnjax.train import optim, setup, steps
from cnnjax.train import warm_start as warm_start_lib
from cnnjax.train.durations import to_steps
from cnnjax.train.photometric import DevicePhotometric
from cnnjax.train.workdir_lock import LOCK_FILE, WorkdirLock  # noqa: F401  (LOCK_FILE re-exported)
from cnnjax.train.writer import MetricWriter

COMPILATION_CACHE_ENV = "CNNJAX_COMPILATION_CACHE_DIR"
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "cnnjax", "jax")
# Keys that define what the parameters mean; a workdir's checkpoint must agree.
MODEL_KEYS = ("model", "model_kwargs", "num_classes")


# ---------------------------------------------------------------------------
# Process-wide settings.


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory.

  The directory is `path`, else $CNNJAX_COMPILATION_CACHE_DIR, else
  ~/.cache/cnnjax/jax. "none" turns the cache off. A second run of the same
  config then skips XLA compilation (seconds to minutes for deep nets).
  """
  path = path or os.environ.get(COMPILATION_CACHE_ENV) or DEFAULT_COMPILATION_CACHE
  if path.lower() == "none":
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as e:
    raise ConfigError(
        f"config.compilation_cache_dir={path!r} is not usable ({e}); choose a writable "
        f"directory (or ${COMPILATION_CACHE_ENV}), or 'none' to turn the cache off") from e
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


class StopRequest:
  """Set by SIGTERM/SIGINT during a run; the loop saves and returns at the next step."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __bool__(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C means "now"
    self.signal_name = signal.Signals(signum).name

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self  # signals reach only the main thread; nothing to install
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    try:
      yield self
    finally:
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)


# ---------------------------------------------------------------------------
# Config handling.


def _mutable_copy(config: Any) -> ml_collections.ConfigDict:
  if isinstance(config, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(config.to_dict())
  return ml_collections.ConfigDict(dict(config))


def _model_identity(config: Mapping[str, Any]) -> dict[str, Any]:
  plain = config_lib.as_plain_dict(config)
  return {k: plain.get(k) for k in MODEL_KEYS}


def check_workdir_compatible(workdir: str, config: Mapping[str, Any]) -> None:
  """CheckpointError when the workdir's checkpoints belong to another model.

  A config.json that exists but cannot be read (torn by a crash of the
  machine) only loses this early, friendly check: restoring compares the
  checkpoint's own shapes with the model, and the file is rewritten whole.
  """
  if not ckpt_lib.has_checkpoint(workdir):
    return
  try:
    stored_config = ckpt_lib.read_workdir_config(workdir)
  except CheckpointError as error:
    if not os.path.exists(os.path.join(workdir, ckpt_lib.CONFIG_FILE)):
      raise
    logging.getLogger(__name__).warning(
        "%s; relying on the checkpoint's own shapes to match this model", error)
    return
  stored = _model_identity(stored_config)
  current = _model_identity(config)
  different = {k: (stored[k], current[k]) for k in MODEL_KEYS if stored[k] != current[k]}
  if different:
    details = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in different.items())
    raise CheckpointError(
        f"{workdir} holds checkpoints of a different model ({details}). Use a fresh --workdir, "
        "or the config the checkpoints were trained with")


def _check_init_from(config: Mapping[str, Any], workdir: str) -> None:
  source = config["init_from"]
  if not source:
    return
  if not os.path.isdir(source):
    raise ConfigError(
        f"config.init_from={source!r} does not exist: pass the --workdir of a trained VGG-A run")
  if not ckpt_lib.has_checkpoint(source):
    raise CheckpointError(
        f"config.init_from={source!r} holds no checkpoint (expected {source}/checkpoints/<step>): "
        "train net A there first")
  stored = ckpt_lib.read_workdir_config(source)
  if not str(stored.get("model", "")).startswith("vgg"):
    raise CheckpointError(
        f"config.init_from={source!r} was trained with model {stored.get('model')!r}; the warm "
        "start copies layers of a VGG (net A)")
  if os.path.abspath(source) == os.path.abspath(workdir):
    raise ConfigError("config.init_from must be another workdir than --workdir")


def _write_whole(path: str, text: str) -> None:
  """Replaces `path` in one rename: a run killed mid-write leaves the old file, not half."""
  partial = path + ".partial"
  with open(partial, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)


def _split_size(dataset: str, data_dir: str | None, split: str, fallback: int,
                on_bad_image: str) -> int:
  from cnnjax.data import sources  # pylint: disable=g-import-not-at-top
  try:
    return int(sources.get_source(dataset, data_dir, on_bad_image=on_bad_image).num_examples(split))
  except Exception:  # pylint: disable=broad-except  (metadata not available: use the info's count)
    return int(fallback)


# ---------------------------------------------------------------------------
# The run.


class _Run:
  """Everything a run holds; `run()` drives it."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               stop_after_steps: int | None):
    self.config = config
    self.workdir = workdir
    self.stop_after_steps = stop_after_steps
    self.is_main = jax.process_index() == 0
    self.num_devices = jax.device_count()

  # -- set-up ---------------------------------------------------------------
  def prepare(self) -> None:
    from cnnjax import data  # pylint: disable=g-import-not-at-top
    self.data = data
    c = self.config
    self.data_dir = c.data_dir or None
    info = data.dataset_info(c.dataset, self.data_dir, on_bad_image=c.on_bad_image)
    self.skipped_images = int(getattr(info, "skipped_images", 0) or 0)
    if self.skipped_images:
      _log(f"skipped {self.skipped_images} unreadable image(s) of {c.dataset} "
           "(on_bad_image='skip')", self)
    self.train_split = c.train_split or info.train_split
    self.eval_split = c.eval_split or info.eval_split
    if c.num_classes == 0:
      c.num_classes = int(info.num_classes)
    elif c.num_classes < info.num_classes:
      raise ConfigError(
          f"config.num_classes={c.num_classes} is smaller than the {info.num_classes} classes of "
          f"{c.dataset!r}: labels >= {c.num_classes} would have no output; use 0 (the dataset's "
          "count) or more")
    check_workdir_compatible(self.workdir, c)
    num_train = _split_size(c.dataset, self.data_dir, self.train_split, info.num_train_examples,
                            c.on_bad_image)
    self.steps_per_epoch = max(num_train // c.batch_size, 1)
    self.total_steps = to_steps(c, "num", self.steps_per_epoch)
    self.eval_every = to_steps(c, "eval_every", self.steps_per_epoch)
    self.checkpoint_every = to_steps(c, "checkpoint_every", self.steps_per_epoch)
    self.eval_batch_size = c.eval_batch_size or c.batch_size

    self.mesh = sharding.make_mesh()
    self.model = setup.create_model(c, num_devices=self.num_devices)
    self.tx = optim.create_optimizer(c)
    self.recipe = setup.step_recipe(c, self.steps_per_epoch, self.total_steps)
    if c.augment == "inception" and c.augment_kwargs.get("photometric", True) == "device":
      self.recipe = dataclasses.replace(self.recipe, photometric=self._device_photometric())
    self.store = ckpt_lib.CheckpointStore(self.workdir, c.keep_checkpoints)
    latest = self.store.newest_restorable_step()
    self.start_step = int(latest or 0)
    meta = self.store.read_meta(latest) if latest is not None else {}
    self.best_error = float(meta.get("best_eval_error", float("inf")))

    self.train_data = data.train_iterator(
        c.dataset, data_dir=self.data_dir, split=self.train_split, global_batch_size=c.batch_size,
        augment=c.augment, augment_kwargs=c.augment_kwargs.to_dict(),
        image_size=c.image_size or None, normalize=c.normalize, seed=c.seed,
        start_step=self.start_step, on_bad_image=c.on_bad_image)
    self.first_batch = next(self.train_data)
    image_shape = self.first_batch["image"].shape[1:]
    self.init_fn = setup.state_initializer(self.model, self.tx, self.recipe, image_shape)
    try:
      self.abstract = sharding.abstract_replicated(self.init_fn, self.mesh,
                                                   jax.random.PRNGKey(c.seed))
    except CnnjaxError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (the model refused its options)
      raise ConfigError(
          f"config.model={c.model!r} / config.model_kwargs={c.model_kwargs.to_dict()} cannot "
          f"be built for {tuple(image_shape)} images: {type(e).__name__}: {e}") from e
    if self.is_main:
      _write_whole(os.path.join(self.workdir, ckpt_lib.CONFIG_FILE),
                   c.to_json(indent=2, sort_keys=True) + "\n")

  def _device_photometric(self) -> DevicePhotometric:
    """The train step's photometric distortions and normalisation (photometric="device")."""
    c = self.config
    strengths = {**self.data.augment.PHOTOMETRIC_DEFAULTS,
                 **{k: v for k, v in c.augment_kwargs.to_dict().items()
                    if k in self.data.augment.PHOTOMETRIC_DEFAULTS}}
    mean, std = self.data.channel_normalization(c.dataset, normalize=c.normalize,
                                                data_dir=self.data_dir, on_bad_image=c.on_bad_image)
    return DevicePhotometric(**{k: float(v) for k, v in strengths.items()}, mean=mean, std=std)

  def initial_state(self):
    c = self.config
    if self.start_step > 0:
      arrays, _ = self.store.restore(self.abstract.arrays(), self.start_step)
      return setup.rebuild_state(self.abstract, arrays), f"resumed from step {self.start_step}"
    state = setup.create_state(self.init_fn, self.mesh, c.seed)
    if c.init_from:
      source, _ = ckpt_lib.restore_variables(c.init_from)
      target = {"params": state.params}
      if state.batch_stats:
        target["batch_stats"] = state.batch_stats
      target = jax.tree_util.tree_map(np.asarray, target)
      merged, mapping = warm_start_lib.warm_start_vgg(target, source)
      replicated = sharding.replicated(self.mesh)
      put = lambda tree: jax.tree_util.tree_map(lambda x: jax.device_put(x, replicated), tree)
      params = put(merged["params"])
      state = state.replace(params=params, batch_stats=put(merged.get("batch_stats", {})),
                            ema_params=params if state.ema_params is not None else None)
      copied = ", ".join(f"{dst}<-{src}" for dst, src in mapping.items())
      return state, f"warm start from {c.init_from}: {copied}"
    return state, "fresh start"

  # -- evaluation -----------------------------------------------------------
  def evaluate(self, state, evaluate_fn, use_ema: bool) -> dict[str, float]:
    c = self.config
    batches = self.data.eval_iterator(
        c.dataset, data_dir=self.data_dir, split=self.eval_split,
        global_batch_size=self.eval_batch_size, view=c.eval_view,
        view_kwargs=c.eval_view_kwargs.to_dict(), image_size=c.image_size or None,
        normalize=c.normalize, on_bad_image=c.on_bad_image)
    total = None
    for index, local in enumerate(batches):
      if c.eval_num_batches and index >= c.eval_num_batches:
        break
      sums = evaluate_fn(state, sharding.global_batch(local, self.mesh), use_ema=use_ema)
      total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    if total is None:
      raise ConfigError(f"the validation split {self.eval_split!r} yielded no batches")
    return metrics_lib.averages_from_sums(metrics_lib.to_host(total))

  def meta(self, state, step: int) -> dict[str, Any]:
    return {"step": step, "data_position": step, "epoch": step / self.steps_per_epoch,
            "best_eval_error": self.best_error, "model": self.config.model,
            "num_classes": int(self.config.num_classes), "dataset": self.config.dataset,
            "time": time.time()}


def run(config: Any, workdir: str, *, stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns a summary.

  Args:
    config: a ConfigDict (or mapping) with the keys of cnnjax/configs/base.py.
    workdir: where checkpoints, config.json, metrics.jsonl and TensorBoard
      events go. Created if missing.
    stop_after_steps: train at most this many steps in this call, then save
      and return as if preempted (for time-sliced jobs); None: to the end.

  Returns:
    {"step", "interrupted", "eval": {loss, top1_error, top5_error, num_examples},
     "eval_ema"?: {...}, "workdir"}.
  Raises:
    ConfigError, CheckpointError (before any compute), NonFiniteError,
    WorkdirLockedError, DataError.
  """
  from cnnjax import models  # pylint: disable=g-import-not-at-top
  config_lib.validate(config, num_devices=jax.device_count(), model_names=models.list_models())
  config = _mutable_copy(config)
  _check_init_from(config, workdir)
  if stop_after_steps is not None and stop_after_steps < 0:
    raise ConfigError(f"stop_after_steps must be >= 0, got {stop_after_steps}")
  enable_compilation_cache(config.compilation_cache_dir or None)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir {workdir!r} cannot be created: {e}") from e
  lock = WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    state_run = _Run(config, workdir, stop_after_steps)
    state_run.prepare()
    return _train(state_run)
  finally:
    lock.release()


def _log(message: str, run: _Run) -> None:
  if run.is_main:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(message, file=sys.stdout)


def _train(r: _Run) -> dict[str, Any]:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  c = r.config
  state, how = r.initial_state()
  _log(f"cnnjax: {c.model} on {c.dataset} ({r.train_split} -> {r.eval_split}), "
       f"{r.num_devices} device(s), global batch {c.batch_size}, "
       f"{r.total_steps} steps ({r.steps_per_epoch} per epoch); {how}", r)
  train_fn, evaluate_fn, after_validation_fn = steps.jit_for_mesh(r.mesh)
  writer = MetricWriter(r.workdir, enabled=r.is_main, resume_step=r.start_step)
  stop = StopRequest()
  has_ema = state.ema_params is not None
  profile = tuple(c.profile_steps) if c.profile_steps else None
  end_step = r.total_steps
  if r.stop_after_steps is not None:
    end_step = min(end_step, r.start_step + r.stop_after_steps)
  bar = tqdm(total=r.total_steps, initial=r.start_step, disable=not (c.progress_bar and r.is_main),
             dynamic_ncols=True, mininterval=1.0, unit="step", file=sys.stdout)
  summary: dict[str, Any] = {"workdir": r.workdir, "interrupted": False,
                             "skipped_images": r.skipped_images}
  window: list[dict[str, float]] = []
  window_start = time.perf_counter()
  window_steps = 0
  pending: tuple[int, Any] | None = None
  last_eval_step = -1
  last_results: dict[str, Any] = {}
  profiling = False
  step = r.start_step

  def check(pending_item) -> None:
    """Fetches one step's metrics; NonFiniteError if that step failed."""
    done_step, device_metrics = pending_item
    host = {k: float(v) for k, v in metrics_lib.to_host(device_metrics).items()}
    if host["nonfinite"]:
      what = steps.describe_nonfinite(state, host)
      r.store.wait()
      kept = r.store.latest_step()
      raise NonFiniteError(
          f"step {done_step}: the {what} is NaN/Inf (loss {host['loss']}, learning rate "
          f"{host['learning_rate']:.3g}). Nothing of this step was applied or saved; the last "
          f"good checkpoint is step {kept} in {r.workdir}/checkpoints. Lower the learning rate "
          "or fix the input, then rerun to resume from it")
    window.append(host)

  def flush_window(at_step: int) -> None:
    nonlocal window, window_start, window_steps
    if not window:
      return
    elapsed = max(time.perf_counter() - window_start, 1e-9)
    averaged = metrics_lib.mean_of(window)
    averaged.pop("nonfinite", None)
    averaged.pop("nonfinite_leaf", None)
    averaged["learning_rate"] = window[-1]["learning_rate"]
    averaged["images_per_sec"] = window_steps * c.batch_size / elapsed
    averaged["epoch"] = at_step / r.steps_per_epoch
    writer.write(at_step, "train", averaged)
    bar.set_postfix(epoch=f"{averaged['epoch']:.2f}", loss=f"{averaged['loss']:.4f}",
                    lr=f"{averaged['learning_rate']:.3g}", img_s=f"{averaged['images_per_sec']:.0f}",
                    refresh=False)
    window, window_steps, window_start = [], 0, time.perf_counter()

  def run_eval(at_step: int, feed_plateau: bool) -> dict[str, Any]:
    nonlocal state, last_eval_step, last_results
    started = time.perf_counter()
    results = {"eval": r.evaluate(state, evaluate_fn, use_ema=False)}
    if has_ema:
      results["eval_ema"] = r.evaluate(state, evaluate_fn, use_ema=True)
    seconds = time.perf_counter() - started
    learning_rate = float(metrics_lib.to_host(optim.current_learning_rate(state.opt_state)))
    for key, values in results.items():
      split = "val" if key == "eval" else "val_ema"
      writer.write(at_step, split, dict(values, learning_rate=learning_rate,
                                        images_per_sec=values["num_examples"] / seconds,
                                        epoch=at_step / r.steps_per_epoch, split_name=r.eval_split))
    if feed_plateau:
      state = after_validation_fn(state, jnp.float32(results["eval"]["top1_error"]))
    last_eval_step, last_results = at_step, results
    ema_text = (f", EMA top-1 {100 * (1 - results['eval_ema']['top1_error']):.2f}%"
                if has_ema else "")
    _log(f"step {at_step}: {r.eval_split} loss {results['eval']['loss']:.4f}, top-1 error "
         f"{100 * results['eval']['top1_error']:.2f}%, top-5 error "
         f"{100 * results['eval']['top5_error']:.2f}%{ema_text}", r)
    return results

  def save(at_step: int, *, best: bool = False) -> None:
    r.store.save(state.arrays(), r.meta(state, at_step), best=best)

  try:
    with stop.installed():
      batch_iter: Iterator = _chain_first(r.first_batch, r.train_data)
      while step < end_step:
        local = next(batch_iter)
        batch = sharding.global_batch(local, r.mesh)
        if profile and step + 1 == profile[0] and r.is_main:
          jax.profiler.start_trace(os.path.join(r.workdir, "profile"))
          profiling = True
        state, device_metrics = train_fn(state, batch)
        step += 1
        window_steps += 1
        if pending is not None:
          check(pending)
        pending = (step, device_metrics)
        if profiling and step == profile[1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
          _log(f"profile of steps {profile[0]}..{profile[1]} written to {r.workdir}/profile", r)
        bar.update(1)

        stopping = _agree(bool(stop), step, c.log_every_steps)
        is_last = step == end_step
        do_eval = r.eval_every > 0 and step % r.eval_every == 0
        do_ckpt = (r.checkpoint_every > 0 and step % r.checkpoint_every == 0) or is_last or stopping
        if step % c.log_every_steps == 0 or do_eval or do_ckpt:
          check(pending)
          pending = None
          flush_window(step)
        if do_eval:
          results = run_eval(step, feed_plateau=True)
          if results["eval"]["top1_error"] < r.best_error:
            r.best_error = results["eval"]["top1_error"]
            save(step, best=True)
        if do_ckpt:
          save(step)
        if stopping:
          summary["interrupted"] = True
          _log(f"{stop.signal_name or 'stop request'}: saved step {step} in {r.workdir}; run the "
               "same command again to resume", r)
          break
      bar.close()
      if pending is not None:
        check(pending)
      if step < r.total_steps and not summary["interrupted"]:
        summary["interrupted"] = True  # stop_after_steps reached
      if not summary["interrupted"]:
        results = (run_eval(step, feed_plateau=False) if last_eval_step != step
                   else last_results)
        summary.update(results)
        if results["eval"]["top1_error"] < r.best_error and step > r.start_step:
          r.best_error = results["eval"]["top1_error"]
          save(step, best=True)
        _log(f"final held-out accuracy ({r.eval_split}, {results['eval']['num_examples']} "
             f"examples, step {step}): top-1 {100 * (1 - results['eval']['top1_error']):.2f}%, "
             f"top-5 {100 * (1 - results['eval']['top5_error']):.2f}%", r)
      if step > r.start_step:
        save(step)  # a no-op when this step is already saved
  finally:
    if profiling:
      jax.profiler.stop_trace()
    bar.close()
    r.store.wait()
    r.store.close()
    writer.close()
  summary["step"] = step
  return summary


def _chain_first(first: Any, rest: Iterator) -> Iterator:
  yield first
  yield from rest


def _agree(local_flag: bool, step: int, every: int) -> bool:
  """Whether to stop now: this process's flag, agreed by all processes every `every` steps."""
  if jax.process_count() == 1:
    return local_flag
  if step % every:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(local_flag, np.int32))
  return bool(np.any(flags))
