"""The optimiser and learning-rate schedules, built from optax parts only.

The chain is `inject_hyperparams(clip? -> add_decayed_weights(mask) -> sgd)`:
weight decay belongs to the optimiser (Caffe's and the papers' update
v <- m v + (g + wd w)), the mask decides which parameters decay, and the
learning rate lives in the optimiser state as an injected hyperparameter, so
it is logged, checkpointed and set by the train step.

The rate the step injects is `schedule(step) * multiplier(lr_control)`. The
schedule is a pure function of the step (constant, multistep, exponential,
warm-up + cosine); `lr_control` holds the two decisions that depend on what
training has seen, as arrays in the train state so they checkpoint:
  * "plateau": optax.contrib.reduce_on_plateau's state, fed the validation
    error after each evaluation (AlexNet, VGG: /10 when it stops improving).
    Its scale multiplies the injected rate rather than sitting in the chain,
    because a chained transform is fed a value at every update while the
    papers decide once per validation pass;
  * "warmup_done": ResNet-110's switch from 0.1x to 1x once a training
    batch's error drops below a threshold.

Note: optax's sgd scales the momentum buffer by the *current* rate when it
applies it (w -= lr v), Caffe folds the rate into the buffer (v = m v + lr g).
The two agree while the rate is constant and differ for a few steps after
each drop.

Needs only jax and optax; the config may be any mapping with the keys of
`cnnjax/configs/base.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from cnnjax.train import durations

WEIGHT_DECAY_MASKS = ("kernels", "kernels_and_biases", "all", "none")


def _is_normalisation_param(path, siblings: Mapping[str, Any]) -> bool:
  """BatchNorm-like parameters: a layer with a 'scale' (its 'bias' is BN's offset)."""
  del path
  return "scale" in siblings


def weight_decay_mask(params, which: str = "kernels"):
  """A boolean pytree over `params`: True where weight decay applies.

  kernels:            conv and dense kernels (leaves named 'kernel', or any other >= 2-D
                      weight that is not a bias, a BN scale/offset or an embedding)
  kernels_and_biases: also the biases of conv/dense layers, not BatchNorm's scale/offset
  all:                every parameter, BatchNorm included (Caffe's decay on every blob)
  none:               nothing
  """
  if which not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"unknown weight_decay_mask {which!r}; choose one of {WEIGHT_DECAY_MASKS}")

  def visit(tree, path=()):
    if not isinstance(tree, Mapping):
      raise TypeError("params must be a nested mapping of arrays")
    out = {}
    for name, value in tree.items():
      if isinstance(value, Mapping):
        out[name] = visit(value, path + (name,))
        continue
      is_norm = _is_normalisation_param(path, tree)
      # By name, not by ndim: scan_blocks stacks BN's scale/bias of blocks 2..n
      # into 2-D arrays, which must stay as undecayed as block 1's 1-D ones.
      is_kernel = name == "kernel" or (
          not is_norm and name not in ("bias", "scale", "embedding")
          and getattr(value, "ndim", 0) >= 2)
      if which == "all":
        out[name] = True
      elif which == "none":
        out[name] = False
      elif which == "kernels":
        out[name] = bool(is_kernel and not is_norm)
      else:
        out[name] = bool(is_kernel or (name == "bias" and not is_norm))
    return type(tree)(out) if not hasattr(tree, "unfreeze") else out

  return visit(params)


def _sgd_chain(learning_rate, momentum, weight_decay, *, nesterov: bool, mask: Callable,
               clip_norm: float) -> optax.GradientTransformation:
  parts = []
  if clip_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_norm))
  parts.append(optax.add_decayed_weights(weight_decay, mask))
  parts.append(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))
  return optax.chain(*parts)


def base_learning_rate(config: Mapping[str, Any]) -> float:
  """The recipe's peak rate, after the linear scaling rule lr * batch / base_batch if chosen."""
  lr = float(config["learning_rate"])
  if config["lr_scaling"] == "linear":
    lr *= config["batch_size"] / config["lr_base_batch_size"]
  return lr


def create_optimizer(config: Mapping[str, Any]) -> optax.GradientTransformation:
  """SGD with momentum (Nesterov optional), masked weight decay, injected learning rate."""
  if config["optimizer"] != "sgd":
    raise ValueError(f"unknown optimizer {config['optimizer']!r}; only 'sgd' is implemented")
  which = config["weight_decay_mask"]
  return optax.inject_hyperparams(
      _sgd_chain, static_args=("nesterov", "mask", "clip_norm"))(
          learning_rate=base_learning_rate(config),
          momentum=float(config["momentum"]),
          weight_decay=float(config["weight_decay"]),
          nesterov=bool(config["nesterov"]),
          mask=lambda params: weight_decay_mask(params, which),
          clip_norm=float(config["grad_clip_norm"]))


def learning_rate_schedule(config: Mapping[str, Any], steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """The step-only part of the learning rate (see the module docstring)."""
  peak = base_learning_rate(config)
  kind = config["schedule"]
  factor = float(config["lr_decay_factor"])
  warmup = durations.to_steps(config, "warmup", steps_per_epoch)
  if kind in ("constant", "plateau"):
    schedule = optax.constant_schedule(peak)
  elif kind == "multistep":
    boundaries = durations.boundaries_to_steps(config, steps_per_epoch)
    scales: dict[int, float] = {}
    for b in boundaries:
      scales[b] = scales.get(b, 1.0) * factor
    schedule = optax.piecewise_constant_schedule(peak, scales)
  elif kind == "exponential":
    every = durations.to_steps(config, "lr_decay_every", steps_per_epoch)
    schedule = optax.exponential_decay(peak, transition_steps=max(every, 1), decay_rate=factor,
                                       staircase=True)
  elif kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  else:
    raise ValueError(f"unknown schedule {kind!r}")
  if warmup <= 0:
    return schedule
  ramp = optax.linear_schedule(0.0, peak, warmup)
  # Boundaries stay absolute (optax.join_schedules would shift them by the warm-up).
  return lambda step: jnp.where(step < warmup, ramp(step), schedule(step))


def plateau_transform(config: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
  """optax's reduce-on-plateau, fed one validation error per evaluation."""
  factor = float(config["lr_decay_factor"])
  return optax.contrib.reduce_on_plateau(
      factor=factor, patience=int(config["plateau_patience"]), rtol=float(config["plateau_rtol"]),
      atol=0.0, cooldown=0, accumulation_size=1,
      min_scale=factor ** int(config["plateau_max_reductions"]) * (1 - 1e-6))


@dataclasses.dataclass(frozen=True)
class LearningRateControl:
  """The data-dependent part of the learning rate (static; its state is an array pytree)."""

  plateau: optax.GradientTransformationExtraArgs | None = None
  error_warmup_factor: float = 0.0
  error_warmup_threshold: float = 0.8

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> LearningRateControl:
    return cls(
        plateau=plateau_transform(config) if config["schedule"] == "plateau" else None,
        error_warmup_factor=float(config["error_warmup_factor"]),
        error_warmup_threshold=float(config["error_warmup_threshold"]))

  def init(self) -> dict[str, Any]:
    state = {}
    if self.plateau is not None:
      state["plateau"] = self.plateau.init(jnp.zeros((), jnp.float32))
    if self.error_warmup_factor > 0:
      state["warmup_done"] = jnp.zeros((), jnp.bool_)
    return state

  def multiplier(self, state: Mapping[str, Any]) -> jax.Array:
    scale = jnp.ones((), jnp.float32)
    if "plateau" in state:
      scale = scale * state["plateau"].scale.astype(jnp.float32)
    if "warmup_done" in state:
      scale = scale * jnp.where(state["warmup_done"], 1.0, self.error_warmup_factor)
    return scale

  def after_train_batch(self, state: dict[str, Any], top1_error: jax.Array) -> dict[str, Any]:
    if "warmup_done" not in state:
      return state
    done = jnp.logical_or(state["warmup_done"], top1_error < self.error_warmup_threshold)
    return {**state, "warmup_done": done}

  def after_validation(self, state: dict[str, Any], error: jax.Array) -> dict[str, Any]:
    if "plateau" not in state:
      return state
    _, plateau = self.plateau.update({}, state["plateau"], value=jnp.asarray(error, jnp.float32))
    return {**state, "plateau": plateau}


def set_learning_rate(opt_state, learning_rate: jax.Array):
  """The optimiser state with its injected learning rate replaced."""
  hyperparams = dict(opt_state.hyperparams)
  old = hyperparams["learning_rate"]
  hyperparams["learning_rate"] = jnp.asarray(learning_rate, dtype=jnp.asarray(old).dtype)
  return opt_state._replace(hyperparams=hyperparams)


def current_learning_rate(opt_state) -> jax.Array:
  return opt_state.hyperparams["learning_rate"]
