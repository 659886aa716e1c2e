"""The pure train and eval steps: one SPMD program each, compiled by jit.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch)
-> summed metrics` are module-level functions of arrays only; the loop is
the only stateful code. Under a mesh the batch is a global array sharded on
'data' and the state is replicated, so jit inserts the gradient all-reduce
(and, for synchronised BatchNorm, the statistics all-reduce) itself.

Non-finite values never reach the state: when the loss, a gradient, a new
BatchNorm statistic or an updated parameter is NaN/Inf the step returns the
*input* state unchanged and reports which quantity failed
(`metrics["nonfinite"]`: 0 none, 1 loss, 2 gradient, 3 BatchNorm statistic,
4 updated parameter; `metrics["nonfinite_leaf"]`: the index
of the first bad leaf in `jax.tree_util.tree_leaves` order, see
`describe_nonfinite`). The first failure is also recorded on the device in
`state.first_nonfinite` (step, quantity, leaf), and every later step applies
nothing, so the loop reads the record at its boundaries only (no per-step
host sync), stops with a NonFiniteError naming the exact step, and the last
checkpoint, written from a finite state, stays the newest.

Needs only jax, flax and optax.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from cnnjax import sharding
from cnnjax import scoring
from cnnjax.scoring import losses, metrics as metrics_lib
from cnnjax.train import optim
from cnnjax.train.state import TrainState

Batch = dict[str, jax.Array]
NONFINITE_QUANTITIES = ("none", "loss", "gradient", "BatchNorm statistic", "updated parameter")


def _first_nonfinite_leaf(tree) -> tuple[jax.Array, jax.Array]:
  """(any leaf has a NaN/Inf, index of the first such leaf)."""
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.bool_), jnp.zeros((), jnp.int32)
  bad = jnp.stack([jnp.logical_not(jnp.all(jnp.isfinite(x))) for x in leaves])
  return jnp.any(bad), jnp.argmax(bad).astype(jnp.int32)


def _model_variables(state: TrainState, params) -> dict[str, Any]:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch {"image": [B,H,W,C], "label": [B]} (not jitted)."""
  rules = state.rules
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  images = batch["image"]
  if rules.device_input is not None:  # uint8 batches: augment colour and normalise here
    images = rules.device_input.train(images, state.rng, state.step, batch.get("window"),
                                       batch.get("crop"))

  def loss_fn(params):
    (logits, feats), model_state = state.apply_fn(
        _model_variables(state, params), images, train=True, features=True,
        rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
    total, main = losses.total_training_loss(
        logits, batch["label"], feats, loss=rules.loss,
        label_smoothing=rules.label_smoothing, aux_loss_weight=rules.aux_loss_weight)
    return total, (main, logits, model_state)

  (total, (main, logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  top1 = jnp.mean(metrics_lib.topk_wrong(logits, batch["label"], 1))
  top5 = jnp.mean(metrics_lib.topk_wrong(logits, batch["label"], 5))

  learning_rate = (rules.learning_rate_fn(state.step)
                   * rules.lr_control.multiplier(state.lr_control))
  opt_state = optim.set_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = state.tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  batch_stats = model_state.get("batch_stats", state.batch_stats) if state.batch_stats else {}
  ema_params = state.ema_params
  if ema_params is not None:
    ema_params = optax.incremental_update(params, ema_params, step_size=1.0 - rules.ema_decay)
  new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema_params, lr_control=rules.lr_control.after_train_batch(state.lr_control, top1))

  new_state, nonfinite, nonfinite_leaf = _applied_if_finite(state, new_state, total, grads,
                                                            batch_stats, params)
  step_metrics = {
      "loss": main,
      "total_loss": total,
      "top1_error": top1,
      "top5_error": top5,
      "learning_rate": jnp.asarray(learning_rate, jnp.float32),
      "grad_norm": metrics_lib.global_norm(grads),
      "param_norm": metrics_lib.global_norm(params),
      "update_norm": metrics_lib.global_norm(updates),
      "nonfinite": nonfinite.astype(jnp.int32),
      "nonfinite_leaf": nonfinite_leaf.astype(jnp.int32),
  }
  return new_state, step_metrics


def _applied_if_finite(state: TrainState, new_state: TrainState, total: jax.Array, grads,
                       batch_stats, params) -> tuple[TrainState, jax.Array, jax.Array]:
  """(the state after the step, what was non-finite, which leaf).

  What: 0 all finite, 1 the loss, 2 a gradient, 3 a BN statistic, 4 a parameter.
  A step applies only while no step of the run has failed: after the first
  NaN/Inf the state stays the last finite one until the loop looks, and
  `first_nonfinite` records (step, what, leaf) of that first failure.
  """
  loss_bad = jnp.logical_not(jnp.isfinite(total))
  grad_bad, grad_leaf = _first_nonfinite_leaf(grads)
  stats_bad, stats_leaf = _first_nonfinite_leaf(batch_stats)
  params_bad, params_leaf = _first_nonfinite_leaf(params)
  nonfinite = jnp.select([loss_bad, grad_bad, stats_bad, params_bad], [1, 2, 3, 4], 0)
  nonfinite_leaf = jnp.select([loss_bad, grad_bad, stats_bad, params_bad],
                              [0, grad_leaf, stats_leaf, params_leaf], 0)
  first_failure = (nonfinite != 0) & (state.first_nonfinite[0] == 0)
  apply = (nonfinite == 0) & (state.first_nonfinite[0] == 0)
  new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(apply, new, old), new_state, state)
  record = jnp.stack([state.step + 1, nonfinite, nonfinite_leaf]).astype(jnp.int32)
  return (new_state.replace(first_nonfinite=jnp.where(first_failure, record,
                                                      state.first_nonfinite)),
          nonfinite, nonfinite_leaf)


def eval_step_fn(state: TrainState, batch: Batch, use_ema: bool = False) -> dict[str, jax.Array]:
  """Summed loss / top-1 / top-5 mistakes / count over a padded, masked batch (not jitted).

  Any view `cnnjax.scoring.view_scores` takes: one image, several
  (scored by the softmax averaged over them) or dense multi-scale keys;
  the same scoring as `python -m cnnjax.evaluate`.
  """
  scores = scoring.view_scores(state.apply_fn, state.variables(use_ema), batch,
                               device_input=state.rules.device_input)  # uint8: normalised here
  return scoring.error_sums(scores, batch["label"], batch.get("mask"), loss=state.rules.loss)


def after_validation_fn(state: TrainState, validation_error: jax.Array) -> TrainState:
  """Feeds a validation error to the learning-rate control (plateau schedule)."""
  return state.replace(
      lr_control=state.rules.lr_control.after_validation(state.lr_control, validation_error))


# Jitted, state donated (train) / kept (eval). The loop re-jits the same
# functions with explicit shardings (`jit_for_mesh`); these suit one device.
train_step = jax.jit(train_step_fn, donate_argnums=(0,))
eval_step = jax.jit(eval_step_fn, static_argnames=("use_ema",))
after_validation = jax.jit(after_validation_fn, donate_argnums=(0,))


def jit_for_mesh(mesh) -> tuple[Any, Any, Any]:
  """(train_step, eval_step, after_validation) jitted for `mesh`: the state stays
  replicated, and is donated to training and to the plateau update."""
  rep = sharding.replicated(mesh)
  train = jax.jit(train_step_fn, donate_argnums=(0,), out_shardings=(rep, rep))
  evaluate = jax.jit(eval_step_fn, static_argnames=("use_ema",), out_shardings=rep)
  after_validation = jax.jit(after_validation_fn, donate_argnums=(0,), out_shardings=rep)
  return train, evaluate, after_validation


def path_name(path) -> str:
  """'conv1/kernel' for a jax key path."""
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def describe_nonfinite(state: TrainState, step_metrics: dict[str, Any]) -> str:
  """'gradient of params/conv1/kernel' etc. from a step's host-side metrics
  ({"nonfinite": code, "nonfinite_leaf": index}, or the state's record)."""
  code = int(step_metrics["nonfinite"])
  what = NONFINITE_QUANTITIES[code]
  if code in (2, 3, 4):
    tree = state.batch_stats if code == 3 else state.params
    paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    index = int(step_metrics["nonfinite_leaf"])
    if 0 <= index < len(paths):
      prefix = "batch_stats" if code == 3 else "params"
      return f"{what} of {prefix}/{paths[index]}"
  return what
