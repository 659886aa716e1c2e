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

`log_every_steps` is the trade-off: every boundary waits for the devices
to finish the steps before it, so a small value (1) costs a sync per step
(tens of microseconds on a GPU, a real share of a 10-20 ms step), a large
one delays the NaN check and the progress line by that many steps.

SIGTERM / SIGINT (preemption, Ctrl-C) finish the current step, save, and
return; running the same command again continues exactly where it stopped.

Outputs in the workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/ (the latest N and the best by validation error, one orbax
manager), profile/ (when `profile_steps` is set), and LOCK / LOCK.owner.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    config: a ConfigDict (or mapping) with the keys of cnnjax/configs/base.py.
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
  config_lib.validate(config, num_devices=jax.device_count(), model_names=models.list_models())
  config = config_lib.RunConfig(config)
  workdir_lib.check_init_from(config, workdir)
  if stop_after_steps is not None and stop_after_steps < 0:
    raise ConfigError(f"stop_after_steps must be >= 0, got {stop_after_steps}")
  if config.compilation_cache_dir:  # train.py turns the default cache on; here only when named
    enable_compilation_cache(config.compilation_cache_dir)
  found = workdir_lib.entries(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"--workdir {workdir!r} cannot be created: {e}") from e
  try:
    with acquire_for_run(workdir) as lock:  # every process hears a refusal at once
      try:
        return train_and_evaluate(config, workdir, stop_after_steps=stop_after_steps, lock=lock)
      except BaseException as error:
        if jax.process_index() == 0:  # a failed start leaves the workdir as it found it
          workdir_lib.remove_unused(workdir, found, error)
        raise
  finally:
    if jax.process_index() == 0:
      workdir_lib.remove_if_created_and_empty(workdir, found)


# ---------------------------------------------------------------------------
# Preparation: everything fixed for the run, before the first step.


@dataclasses.dataclass
class Prepared:
  """The fixed parts of a run, made by `prepare`."""

  config: config_lib.RunConfig
  workdir: str
  inputs: inputs_lib.RunInputs
  mesh: Any
  rules: Any
  store: ckpt_lib.CheckpointStore
  start_step: int
  best_error: float
  steps_per_epoch: int
  total_steps: int
  eval_every: int
  checkpoint_every: int
  init_fn: Any
  abstract: Any  # the state's shapes, dtypes and shardings
  first_batch: Any
  train_batches: Iterator[Any]  # the batches after first_batch

  @property
  def is_main(self) -> bool:
    return jax.process_index() == 0


def prepare(config: config_lib.RunConfig, workdir: str) -> Prepared:
  """Resolves the dataset, model, schedule and resume point; computes nothing yet."""
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  c = config
  mesh = sharding.make_mesh()
  c.image_size, size_note = inputs_lib.resolve_image_size(c, models.get_spec(c.model).image_size)
  if size_note:
    log(size_note)
  inputs = inputs_lib.open_inputs(c, mesh)
  if inputs.skipped_images:
    log(f"skipped {inputs.skipped_images} unreadable image(s) of {c.dataset} "
        "(on_bad_image='skip')")
  if c.num_classes == 0:
    c.num_classes = inputs.num_classes
  elif c.num_classes < inputs.num_classes:
    raise ConfigError(
        f"config.num_classes={c.num_classes} is smaller than the {inputs.num_classes} classes of "
        f"{c.dataset!r}: labels >= {c.num_classes} would have no output; use 0 (the dataset's "
        "count) or more")
  workdir_lib.check_workdir_compatible(workdir, c)
  steps_per_epoch = max(inputs.num_train_examples // c.batch_size, 1)
  total_steps = to_steps(c, "num", steps_per_epoch)
  model = setup.create_model(c, num_devices=jax.device_count())
  tx = optim.create_optimizer(c)
  rules = dataclasses.replace(setup.step_rules(c, steps_per_epoch, total_steps),
                               device_input=inputs.device_input)
  store = ckpt_lib.CheckpointStore(workdir, c.keep_checkpoints)
  latest = store.newest_restorable_step()
  start_step = int(latest or 0)
  meta = store.read_meta(latest) if latest is not None else {}

  train_batches = inputs.train_batches(start_step)
  first_batch = next(train_batches)
  image_shape = first_batch["image"].shape[1:]
  init_fn = setup.state_initializer(model, tx, rules, image_shape)
  try:
    abstract = sharding.abstract_replicated(init_fn, mesh, jax.random.PRNGKey(c.seed))
  except CnnjaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (the model refused its options)
    raise ConfigError(
        f"config.model={c.model!r} / config.model_kwargs={c.model_kwargs} cannot "
        f"be built for {tuple(image_shape)} images: {type(e).__name__}: {e}") from e
  if jax.process_index() == 0:
    workdir_lib.write_whole(os.path.join(workdir, ckpt_lib.CONFIG_FILE),
                            c.to_json(indent=2, sort_keys=True) + "\n")
  return Prepared(
      config=c, workdir=workdir, inputs=inputs, mesh=mesh, rules=rules, store=store,
      start_step=start_step, best_error=float(meta.get("best_eval_error", float("inf"))),
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      eval_every=to_steps(c, "eval_every", steps_per_epoch),
      checkpoint_every=to_steps(c, "checkpoint_every", steps_per_epoch),
      init_fn=init_fn, abstract=abstract, first_batch=first_batch, train_batches=train_batches)


def initial_state(r: Prepared):
  """(state, how it was made): restored, warm-started or fresh, placed on the mesh."""
  c = r.config
  if r.start_step > 0:
    arrays, _ = r.store.restore(r.abstract.arrays(), r.start_step)
    return setup.rebuild_state(r.abstract, arrays), f"resumed from step {r.start_step}"
  state = setup.create_state(r.init_fn, r.mesh, c.seed)
  if not c.init_from:
    return state, "fresh start"
  target = {"params": state.params}
  if state.batch_stats:
    target["batch_stats"] = state.batch_stats
  merged, how = workdir_lib.warm_start(c, jax.tree_util.tree_map(np.asarray, target))
  put = lambda tree: jax.device_put(tree, sharding.replicated(r.mesh))  # noqa: E731
  params = put(merged["params"])
  state = state.replace(params=params, batch_stats=put(merged.get("batch_stats", {})),
                        ema_params=params if state.ema_params is not None else None)
  return state, how


# ---------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: config_lib.RunConfig, workdir: str, *,
                       stop_after_steps: int | None = None, lock=None) -> dict[str, Any]:
  """Trains to the config's end (or `stop_after_steps` more steps) and evaluates.

  lock: the run's WorkdirLock; a lease taken over by another run stops this one
  at the next step, before it writes anything (WorkdirLeaseLostError).
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  r = prepare(config, workdir)
  c = r.config
  state, how = initial_state(r)
  log(f"cnnjax: {c.model} on {c.dataset} ({r.inputs.train_split} -> {r.inputs.eval_split}), "
      f"{jax.device_count()} device(s), global batch {c.batch_size}, "
      f"{r.total_steps} steps ({r.steps_per_epoch} per epoch); {how}")
  train_step, eval_step, after_validation = steps.jit_for_mesh(r.mesh)
  log("compiling the train step (XLA; a rerun of the same config reads it from the "
      "compilation cache) ...")
  compile_started = time.perf_counter()
  train_step = memory.compile_checked(train_step, r.abstract, r.first_batch, r.mesh, c)
  log(f"compiled in {time.perf_counter() - compile_started:.1f} s; training")
  writer = MetricWriter(workdir, enabled=r.is_main, resume_step=r.start_step)
  end_step = r.total_steps
  if stop_after_steps is not None:
    end_step = min(end_step, r.start_step + stop_after_steps)
  bar = tqdm(total=r.total_steps, initial=r.start_step,
             disable=not (c.progress_bar and r.is_main and logs.progress_bars_shown(sys.stdout)),
             dynamic_ncols=True, mininterval=1.0, unit="step", file=sys.stdout)
  batches = sharding.prefetch_to_device(itertools.chain([r.first_batch], r.train_batches),
                                        r.mesh, depth=c.prefetch_batches)
  stop = StopRequest()
  profile = tuple(c.profile_steps) if c.profile_steps and r.is_main else None
  summary: dict[str, Any] = {"workdir": workdir, "interrupted": False,
                             "skipped_images": r.inputs.skipped_images}
  window: list[dict[str, jax.Array]] = []  # this window's per-step metrics, still on the device
  window_start = time.perf_counter()
  last_eval: tuple[int, dict[str, Any]] | None = None
  profiling = False
  step = saved_step = r.start_step
  try:
    with stop.installed():
      while step < end_step:
        if profile and step + 1 == profile[0]:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
          profiling = True
        state, step_metrics = train_step(state, next(batches))
        step += 1
        if lock is not None:
          lock.check()  # still this run's workdir (a lease can be taken over)
        window.append(step_metrics)
        if profiling and step == profile[1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
          log(f"profile of steps {profile[0]}..{profile[1]} written to {workdir}/profile")
        bar.update(1)

        stopping = agree_to_stop(bool(stop), step, c.log_every_steps)
        do_eval = (r.eval_every > 0 and step % r.eval_every == 0) or step == r.total_steps
        do_ckpt = ((r.checkpoint_every > 0 and step % r.checkpoint_every == 0)
                   or step == end_step or stopping)
        if step % c.log_every_steps == 0 or do_eval or do_ckpt:
          write_train_row(r, writer, bar, state, window, step, window_start)
          window = []
        best = False
        if do_eval:
          results = validate(r, writer, state, eval_step, step)
          state = after_validation(state, jnp.float32(results["eval"]["top1_error"]))
          last_eval = (step, results)
          best = results["eval"]["top1_error"] < r.best_error
          if best:
            r.best_error = results["eval"]["top1_error"]
        if do_ckpt or best:  # one save per step, tagged when it is the best so far
          writer.flush()  # the step's rows are stored before its checkpoint
          save(r, state, step, best=best)
          saved_step = step
        if not window:  # a boundary: validation and saving stay out of the next window's rate
          window_start = time.perf_counter()
        if stopping:
          summary["interrupted"] = True
          log(f"{stop.signal_name or 'stop request'}: saved step {step} in {workdir}; run the "
              "same command again to resume")
          break
      bar.close()
      if step < r.total_steps:
        summary["interrupted"] = True  # stopped, or stop_after_steps reached
      else:  # the last step was validated in the loop, unless a finished run was resumed
        results = last_eval[1] if last_eval and last_eval[0] == step else validate(
            r, writer, state, eval_step, step)
        summary.update(results)
        log(f"final held-out error ({r.inputs.eval_split}, "
            f"{results['eval']['num_examples']} examples, step {step}): top-1 "
            f"{100 * results['eval']['top1_error']:.2f}%, top-5 "
            f"{100 * results['eval']['top5_error']:.2f}%")
      if step > r.start_step and saved_step != step:
        writer.flush()
        save(r, state, step)
  finally:
    if profiling:
      jax.profiler.stop_trace()
    bar.close()
    r.store.wait()
    summary["checkpoints"] = {"latest": r.store.latest_step(), "best": r.store.best_step()}
    r.store.close()
    writer.close()
  summary["step"] = step
  summary["variables"] = state.variables()
  if state.ema_params is not None:
    summary["ema_variables"] = state.variables(use_ema=True)
  return summary


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
  averaged["images_per_sec"] = len(rows) * r.config.batch_size / max(seconds, 1e-9)
  averaged["epoch"] = step / r.steps_per_epoch
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
        epoch=step / r.steps_per_epoch))
  ema_text = (f", EMA top-1 error {100 * results['eval_ema']['top1_error']:.2f}%"
              if "eval_ema" in results else "")
  log(f"step {step}: {r.inputs.eval_split} loss {results['eval']['loss']:.4f}, top-1 error "
      f"{100 * results['eval']['top1_error']:.2f}%, top-5 error "
      f"{100 * results['eval']['top5_error']:.2f}%{ema_text}")
  return results


def save(r: Prepared, state, step: int, *, best: bool = False) -> None:
  """An asynchronous checkpoint of `state` at `step` (into best/ too when `best`)."""
  meta = {"step": step, "data_position": step, "epoch": step / r.steps_per_epoch,
          "best_eval_error": r.best_error, "model": r.config.model,
          "num_classes": int(r.config.num_classes), "dataset": r.config.dataset,
          "time": time.time()}
  r.store.save(state.arrays(), meta, best=best)
