"""The training loop: the only stateful code of a run.

`run(config, workdir)` validates the config, takes the workdir's lock and
calls `train_and_evaluate`, which reads as the run goes:

1. `prepare`: the dataset's facts, the model, optimiser and step rules,
   the checkpoint store and the step to resume from (or a fresh start,
   optionally warm-started from a VGG-A workdir);
2. the loop proper: jitted train steps on batches prefetched to the
   devices. Nothing is fetched to the host between boundaries: the step's
   metrics stay on the device, and a NaN/Inf is recorded on the device by
   the step itself (`TrainState.first_nonfinite`), so the host can run
   ahead of the devices. At each log, validation and checkpoint boundary
   the window's metrics come back in one transfer, a non-finite step stops
   the run with its exact step and quantity, validation runs and
   checkpoints are saved asynchronously;
3. the held-out evaluation of the last step, saved once (as the best when
   it is).

`run.log_every_steps` is the trade-off: every boundary waits for the devices
to finish the steps before it, so a small value (1) costs a sync per step
(tens of microseconds on a GPU, a real share of a 10-20 ms step), a large
one delays the NaN check and the progress line by that many steps.

SIGTERM / SIGINT (preemption, Ctrl-C) finish the current step, save, and
return; running the same command again continues exactly where it stopped.

Outputs in the workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/ (the latest N and the best by validation error, one orbax
manager), profile/ (when `run.profile_steps` is set), and LOCK / LOCK.owner.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import logs, sharding
from cnnjax.errors import CnnjaxError, ConfigError, NonFiniteError
from cnnjax import scoring
from cnnjax.train import checkpoint as ckpt_lib
from cnnjax.train import config as config_lib
from cnnjax.train import inputs as inputs_lib
from cnnjax.train import memory
from cnnjax.scoring import metrics as metrics_lib
from cnnjax.train import optim, setup, steps
from cnnjax.train import workdir as workdir_lib
from cnnjax.train.compilation_cache import enable_compilation_cache
from cnnjax.train.durations import to_steps
from cnnjax.train.preemption import StopRequest, agree_to_stop
from cnnjax.train.workdir_lock import LOCK_FILE, acquire_for_run  # noqa: F401  (LOCK_FILE re-exported)
from cnnjax.train.writer import MetricWriter


@logs.quiet_libraries()
def run(config: Any, workdir: str, *, stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns a summary.

  Args:
    config: a ConfigDict (or nested mapping) with the settings of
      `cnnjax.configs.base.get_base_config()`, or a validated `Settings`.
    workdir: where checkpoints, config.json, metrics.jsonl and TensorBoard
      events go. Created if missing.
    stop_after_steps: train at most this many steps in this call, then save
      and return as if preempted (for time-sliced jobs); None: to the end.

  Returns:
    {"step", "interrupted", "eval": {loss, top1_error, top5_error, num_examples},
     "eval_ema"?: {...}, "workdir", "variables": the final {"params",
     "batch_stats"?} as device arrays (use them with the model at once, no
     checkpoint read), "ema_variables"?}.
  Raises:
    ConfigError, CheckpointError (before any compute), NonFiniteError,
    WorkdirLockedError, DataError.
  """
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  if isinstance(config, config_lib.Settings):
    config = config.to_dict()
  settings = config_lib.validate(config, num_devices=jax.device_count(),
                                 model_names=models.list_models())
  workdir_lib.check_init_from(settings.model, workdir)
  if stop_after_steps is not None and stop_after_steps < 0:
    raise ConfigError(f"stop_after_steps must be >= 0, got {stop_after_steps}")
  if settings.run.compilation_cache_dir:  # train.py turns the default cache on; here if named
    enable_compilation_cache(settings.run.compilation_cache_dir)
  found = workdir_lib.entries(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir {workdir!r} cannot be created: {e}") from e
  try:
    with acquire_for_run(workdir) as lock:  # every process hears a refusal at once
      try:
        return train_and_evaluate(settings, workdir, stop_after_steps=stop_after_steps,
                                  lock=lock)
      except BaseException as error:
        if jax.process_index() == 0:  # a failed start leaves the workdir as it found it
          workdir_lib.remove_unused(workdir, found, error)
        raise
  finally:
    if jax.process_index() == 0:
      workdir_lib.remove_if_created_and_empty(workdir, found)


# ---------------------------------------------------------------------------
# Preparation: everything fixed for the run, before the first step.


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What the run finds out before its first step; fixed from then on."""

  image_size: int  # the network's input side (config.input.image_size, or the model's)
  num_classes: int  # the model's outputs (config.model.num_classes, or the dataset's)
  num_devices: int  # over every process
  batch_size: int  # global (config.run.batch_size)
  steps_per_epoch: int
  total_steps: int
  eval_every: int  # steps; 0: only at the end
  checkpoint_every: int  # steps; 0: only at the end


@dataclasses.dataclass(frozen=True)
class Prepared:
  """The fixed parts of a run, made by `prepare`."""

  settings: config_lib.Settings
  facts: RunFacts
  workdir: str
  inputs: inputs_lib.RunInputs
  mesh: Any
  rules: Any
  store: ckpt_lib.CheckpointStore
  start_step: int
  best_error: float  # the best validation error of the checkpoints found (inf: none)
  init_fn: Any
  abstract: Any  # the state's shapes, dtypes and shardings
  first_batch: Any
  train_batches: Iterator[Any]  # the batches after first_batch

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


def resolve_facts(model: setup.ModelSettings, run_settings: config_lib.RunSettings,
                  evaluation: inputs_lib.EvalSettings, checkpoint: config_lib.CheckpointSettings,
                  inputs: inputs_lib.RunInputs, image_size: int) -> RunFacts:
  """The run's facts from its settings and what its inputs found."""
  if model.num_classes and model.num_classes < inputs.num_classes:
    raise ConfigError(
        f"config.model.num_classes={model.num_classes} is smaller than the "
        f"{inputs.num_classes} classes of {inputs.dataset!r}: labels >= {model.num_classes} "
        "would have no output; use 0 (the dataset's count) or more")
  steps_per_epoch = max(inputs.num_train_examples // run_settings.batch_size, 1)
  every = lambda steps, epochs, name: to_steps(  # noqa: E731
      steps, epochs, steps_per_epoch, name=name)
  return RunFacts(
      image_size=image_size, num_classes=model.num_classes or inputs.num_classes,
      num_devices=jax.device_count(), batch_size=run_settings.batch_size,
      steps_per_epoch=steps_per_epoch,
      total_steps=every(run_settings.num_steps, run_settings.num_epochs, "run.num"),
      eval_every=every(evaluation.every_steps, evaluation.every_epochs, "eval.every"),
      checkpoint_every=every(checkpoint.every_steps, checkpoint.every_epochs, "checkpoint.every"))


def prepare(settings: config_lib.Settings, workdir: str) -> Prepared:
  """Resolves the dataset, model, schedule and resume point; computes nothing yet."""
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  s = settings
  mesh = sharding.make_mesh()
  image_size, size_note = inputs_lib.resolve_image_size(s.input,
                                                         models.get_spec(s.model.name).image_size)
  if size_note:
    log(size_note)
  inputs = inputs_lib.open_inputs(s.input, s.eval, mesh, batch_size=s.run.batch_size,
                                  seed=s.run.seed, image_size=image_size,
                                  num_classes=s.model.num_classes)
  if inputs.skipped_images:
    log(f"skipped {inputs.skipped_images} unreadable image(s) of {s.input.dataset} "
        "(on_bad_image='skip')")
  facts = resolve_facts(s.model, s.run, s.eval, s.checkpoint, inputs, image_size)
  resolved = s.resolved(image_size=facts.image_size, num_classes=facts.num_classes)
  workdir_lib.check_workdir_compatible(workdir, resolved.model)
  model = setup.create_model(s.model, batch_size=facts.batch_size,
                             num_devices=facts.num_devices, num_classes=facts.num_classes)
  rules = dataclasses.replace(
      setup.step_rules(s.optimizer, s.schedule, s.loss, batch_size=facts.batch_size,
                       steps_per_epoch=facts.steps_per_epoch, total_steps=facts.total_steps),
      device_input=inputs.device_input)
  store = ckpt_lib.CheckpointStore(workdir, s.checkpoint.keep)
  latest = store.newest_restorable_step()
  meta = store.read_meta(latest) if latest is not None else {}
  train_batches = inputs.train_batches(int(latest or 0))
  first_batch = next(train_batches)
  init_fn = setup.state_initializer(model, optim.create_optimizer(s.optimizer, facts.batch_size),
                                    rules, first_batch["image"].shape[1:])
  abstract = _abstract_state(init_fn, mesh, s.model, s.run.seed, first_batch["image"].shape[1:])
  if jax.process_index() == 0:
    workdir_lib.write_whole(os.path.join(workdir, ckpt_lib.CONFIG_FILE),
                            json.dumps(resolved.to_dict(), indent=2, sort_keys=True) + "\n")
  return Prepared(
      settings=s, facts=facts, workdir=workdir, inputs=inputs, mesh=mesh, rules=rules,
      store=store, start_step=int(latest or 0),
      best_error=float(meta.get("best_eval_error", float("inf"))), init_fn=init_fn,
      abstract=abstract, first_batch=first_batch, train_batches=train_batches)


def _abstract_state(init_fn, mesh, model: setup.ModelSettings, seed: int, image_shape):
  """The state's shapes and shardings; a model refusing its options is a ConfigError."""
  try:
    return sharding.abstract_replicated(init_fn, mesh, jax.random.PRNGKey(seed))
  except CnnjaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (the model refused its options)
    raise ConfigError(
        f"config.model.name={model.name!r} / config.model.kwargs={dict(model.kwargs)} cannot "
        f"be built for {tuple(image_shape)} images: {type(e).__name__}: {e}") from e


def initial_state(r: Prepared):
  """(state, how it was made): restored, warm-started or fresh, placed on the mesh."""
  model = r.settings.model
  if r.start_step > 0:
    arrays, _ = r.store.restore(r.abstract.arrays(), r.start_step)
    return setup.rebuild_state(r.abstract, arrays), f"resumed from step {r.start_step}"
  state = setup.create_state(r.init_fn, r.mesh, r.settings.run.seed)
  if not model.init_from:
    return state, "fresh start"
  target = {"params": state.params}
  if state.batch_stats:
    target["batch_stats"] = state.batch_stats
  merged, how = workdir_lib.warm_start(model, jax.tree_util.tree_map(np.asarray, target))
  put = lambda tree: jax.device_put(tree, sharding.replicated(r.mesh))  # noqa: E731
  params = put(merged["params"])
  state = state.replace(params=params, batch_stats=put(merged.get("batch_stats", {})),
                        ema_params=params if state.ema_params is not None else None)
  return state, how


# ---------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class _Progress:
  """What changes as the loop runs (the loop's own, never shared)."""

  step: int
  saved_step: int
  best_error: float
  window: list = dataclasses.field(default_factory=list)  # per-step metrics, still on device
  window_start: float = dataclasses.field(default_factory=time.perf_counter)
  last_eval: tuple[int, dict[str, Any]] | None = None
  profiling: bool = False


def train_and_evaluate(settings: config_lib.Settings, workdir: str, *,
                       stop_after_steps: int | None = None, lock=None) -> dict[str, Any]:
  """Trains to the settings' end (or `stop_after_steps` more steps) and evaluates.

  lock: the run's WorkdirLock; a lease taken over by another run stops this one
  at the next step, before it writes anything (WorkdirLeaseLostError).
  """
  r = prepare(settings, workdir)
  state, how = initial_state(r)
  log(f"cnnjax: {settings.model.name} on {settings.input.dataset} ({r.inputs.train_split} -> "
      f"{r.inputs.eval_split}), {r.facts.num_devices} device(s), global batch "
      f"{r.facts.batch_size}, {r.facts.total_steps} steps ({r.facts.steps_per_epoch} per "
      f"epoch); {how}")
  train_step, eval_step, after_validation = steps.jit_for_mesh(r.mesh)
  log("compiling the train step (XLA; a rerun of the same config reads it from the "
      "compilation cache) ...")
  compile_started = time.perf_counter()
  train_step = memory.compile_checked(train_step, r.abstract, r.first_batch, r.mesh,
                                      model=settings.model.name, image_size=r.facts.image_size)
  log(f"compiled in {time.perf_counter() - compile_started:.1f} s; training")
  writer = MetricWriter(workdir, enabled=r.is_main, resume_step=r.start_step)
  end_step = r.facts.total_steps
  if stop_after_steps is not None:
    end_step = min(end_step, r.start_step + stop_after_steps)
  bar = _progress_bar(r)
  summary: dict[str, Any] = {"workdir": workdir, "interrupted": False,
                             "skipped_images": r.inputs.skipped_images}
  p = _Progress(step=r.start_step, saved_step=r.start_step, best_error=r.best_error)
  stop = StopRequest()
  try:
    with stop.installed():
      state = _train(r, p, state, (train_step, eval_step, after_validation), writer, bar,
                     end_step, lock, stop, summary)
      if p.step < r.facts.total_steps:
        summary["interrupted"] = True  # stopped, or stop_after_steps reached
      else:  # the last step was validated in the loop, unless a finished run was resumed
        summary.update(_final_results(r, p, writer, state, eval_step))
      if p.step > r.start_step and p.saved_step != p.step:
        writer.flush()
        save(r, state, p.step, best_error=p.best_error)
  finally:
    if p.profiling:
      jax.profiler.stop_trace()
    bar.close()
    r.store.wait()
    summary["checkpoints"] = {"latest": r.store.latest_step(), "best": r.store.best_step()}
    r.store.close()
    writer.close()
  summary["step"] = p.step
  summary["variables"] = state.variables()
  if state.ema_params is not None:
    summary["ema_variables"] = state.variables(use_ema=True)
  return summary


def _progress_bar(r: Prepared):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  shown = r.settings.run.progress_bar and r.is_main and logs.progress_bars_shown(sys.stdout)
  return tqdm(total=r.facts.total_steps, initial=r.start_step, disable=not shown,
              dynamic_ncols=True, mininterval=1.0, unit="step", file=sys.stdout)


def _train(r: Prepared, p: _Progress, state, step_fns, writer: MetricWriter, bar, end_step: int,
           lock, stop: StopRequest, summary: dict[str, Any]):
  """The steps from p.step to `end_step`, with their boundaries; returns the last state."""
  train_step, eval_step, after_validation = step_fns
  run_settings = r.settings.run
  batches = sharding.prefetch_to_device(itertools.chain([r.first_batch], r.train_batches),
                                        r.mesh, depth=r.settings.input.prefetch_batches)
  profile = tuple(run_settings.profile_steps) if run_settings.profile_steps and r.is_main else None
  while p.step < end_step:
    _profile_boundary(r, p, state, profile, starting=True)
    state, step_metrics = train_step(state, next(batches))
    p.step += 1
    if lock is not None:
      lock.check()  # still this run's workdir (a lease can be taken over)
    p.window.append(step_metrics)
    _profile_boundary(r, p, state, profile, starting=False)
    bar.update(1)
    stopping = agree_to_stop(bool(stop), p.step, run_settings.log_every_steps)
    state = _boundary(r, p, state, eval_step, after_validation, writer, bar,
                      stopping or p.step == end_step)
    if stopping:
      summary["interrupted"] = True
      log(f"{stop.signal_name or 'stop request'}: saved step {p.step} in {r.workdir}; run the "
          "same command again to resume")
      break
  bar.close()
  return state


def _profile_boundary(r: Prepared, p: _Progress, state, profile, *, starting: bool) -> None:
  """Starts the jax.profiler trace before the first profiled step, stops it after the last."""
  if not profile:
    return
  if starting and p.step + 1 == profile[0]:
    jax.profiler.start_trace(os.path.join(r.workdir, "profile"))
    p.profiling = True
  elif not starting and p.profiling and p.step == profile[1]:
    jax.block_until_ready(state)
    jax.profiler.stop_trace()
    p.profiling = False
    log(f"profile of steps {profile[0]}..{profile[1]} written to {r.workdir}/profile")


def _boundary(r: Prepared, p: _Progress, state, eval_step, after_validation,
              writer: MetricWriter, bar, must_save: bool):
  """After a step: its metrics row, validation and checkpoint, when they are due."""
  f = r.facts
  do_eval = (f.eval_every > 0 and p.step % f.eval_every == 0) or p.step == f.total_steps
  do_ckpt = (f.checkpoint_every > 0 and p.step % f.checkpoint_every == 0) or must_save
  if p.step % r.settings.run.log_every_steps == 0 or do_eval or do_ckpt:
    write_train_row(r, writer, bar, state, p.window, p.step, p.window_start)
    p.window = []
  best = False
  if do_eval:
    results = validate(r, writer, state, eval_step, p.step)
    state = after_validation(state, jnp.float32(results["eval"]["top1_error"]))
    p.last_eval = (p.step, results)
    best = results["eval"]["top1_error"] < p.best_error
    if best:
      p.best_error = results["eval"]["top1_error"]
  if do_ckpt or best:  # one save per step, tagged when it is the best so far
    writer.flush()  # the step's rows are stored before its checkpoint
    save(r, state, p.step, best=best, best_error=p.best_error)
    p.saved_step = p.step
  if not p.window:  # a boundary: validation and saving stay out of the next window's rate
    p.window_start = time.perf_counter()
  return state


def _final_results(r: Prepared, p: _Progress, writer: MetricWriter, state,
                   eval_step) -> dict[str, Any]:
  """The last step's validation (from the loop, or run now) and its log line."""
  results = p.last_eval[1] if p.last_eval and p.last_eval[0] == p.step else validate(
      r, writer, state, eval_step, p.step)
  log(f"final held-out error ({r.inputs.eval_split}, "
      f"{results['eval']['num_examples']} examples, step {p.step}): top-1 "
      f"{100 * results['eval']['top1_error']:.2f}%, top-5 "
      f"{100 * results['eval']['top5_error']:.2f}%")
  return results


# ---------------------------------------------------------------------------
# What the loop does at its boundaries.


def log(message: str) -> None:
  """A line above the progress bar, from process 0 only."""
  if jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    tqdm.write(message, file=sys.stdout)


def write_train_row(r: Prepared, writer: MetricWriter, bar, state, window: list[dict[str, Any]],
                    step: int, window_start: float) -> None:
  """Fetches the window's metrics in one transfer; stops on a NaN/Inf; logs their mean.

  The window's time ends once its metrics are on the host, i.e. once the
  devices have finished its steps (dispatch alone returns much earlier).
  """
  if not window:
    return
  rows, record = metrics_lib.to_host((window, state.first_nonfinite))
  seconds = time.perf_counter() - window_start
  raise_if_nonfinite(r, state, rows, record, first_step=step - len(window) + 1)
  rows = [{k: float(v) for k, v in row.items()} for row in rows]
  averaged = metrics_lib.mean_of(rows)
  for key in ("nonfinite", "nonfinite_leaf"):
    averaged.pop(key, None)
  averaged["learning_rate"] = rows[-1]["learning_rate"]
  averaged["images_per_sec"] = len(rows) * r.facts.batch_size / max(seconds, 1e-9)
  averaged["epoch"] = step / r.facts.steps_per_epoch
  writer.write(step, "train", averaged)
  bar.set_postfix(epoch=f"{averaged['epoch']:.2f}", loss=f"{averaged['loss']:.4f}",
                  lr=f"{averaged['learning_rate']:.3g}",
                  img_s=f"{averaged['images_per_sec']:.0f}", refresh=False)


def raise_if_nonfinite(r: Prepared, state, rows: list[dict[str, Any]], record,
                       first_step: int) -> None:
  """NonFiniteError naming the first failed step and quantity, if the step recorded one."""
  bad_step, code, leaf = (int(x) for x in record)
  if not bad_step:
    return
  what = steps.describe_nonfinite(state, {"nonfinite": code, "nonfinite_leaf": leaf})
  row = rows[bad_step - first_step] if 0 <= bad_step - first_step < len(rows) else {}
  r.store.wait()
  kept = r.store.latest_step()
  raise NonFiniteError(
      f"step {bad_step}: the {what} is NaN/Inf (loss {float(row.get('loss', np.nan))}, learning "
      f"rate {float(row.get('learning_rate', np.nan)):.3g}). Nothing of this step was applied or "
      f"saved; the last good checkpoint is step {kept} in {r.workdir}/checkpoints. Lower the "
      "learning rate or fix the input, then rerun to resume from it")


def evaluate_split(r: Prepared, state, eval_step, *, use_ema: bool) -> dict[str, float]:
  """Loss, top-1 and top-5 error over the validation split (every example once)."""
  sums = scoring.sum_over_batches(lambda batch: eval_step(state, batch, use_ema=use_ema),
                                  r.inputs.eval_batches(), r.mesh,
                                  what=f"the validation split {r.inputs.eval_split!r}")
  return metrics_lib.averages_from_sums(sums)


def validate(r: Prepared, writer: MetricWriter, state, eval_step, step: int) -> dict[str, Any]:
  """Evaluates (and the EMA parameters, if kept), writes the rows, prints one line."""
  started = time.perf_counter()
  results = {"eval": evaluate_split(r, state, eval_step, use_ema=False)}
  if state.ema_params is not None:
    results["eval_ema"] = evaluate_split(r, state, eval_step, use_ema=True)
  seconds = time.perf_counter() - started
  learning_rate = float(metrics_lib.to_host(optim.current_learning_rate(state.opt_state)))
  for key, values in results.items():  # rows named by the split evaluated ("test", "test_ema")
    split = r.inputs.eval_split if key == "eval" else f"{r.inputs.eval_split}_ema"
    writer.write(step, split, dict(
        values, learning_rate=learning_rate, images_per_sec=values["num_examples"] / seconds,
        epoch=step / r.facts.steps_per_epoch))
  ema_text = (f", EMA top-1 error {100 * results['eval_ema']['top1_error']:.2f}%"
              if "eval_ema" in results else "")
  log(f"step {step}: {r.inputs.eval_split} loss {results['eval']['loss']:.4f}, top-1 error "
      f"{100 * results['eval']['top1_error']:.2f}%, top-5 error "
      f"{100 * results['eval']['top5_error']:.2f}%{ema_text}")
  return results


def save(r: Prepared, state, step: int, *, best: bool = False,
         best_error: float | None = None) -> None:
  """An asynchronous checkpoint of `state` at `step` (into best/ too when `best`);
  best_error: the best validation error so far (None: the one the run started with)."""
  meta = {"step": step, "data_position": step, "epoch": step / r.facts.steps_per_epoch,
          "best_eval_error": r.best_error if best_error is None else best_error,
          "model": r.settings.model.name, "num_classes": int(r.facts.num_classes),
          "dataset": r.settings.input.dataset, "time": time.time()}
  r.store.save(state.arrays(), meta, best=best)
