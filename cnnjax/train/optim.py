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

The settings: `OptimizerSettings` (config.optimizer) and `ScheduleSettings`
(config.schedule, with one subtree per schedule holding only its own
settings). Needs only jax and optax.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.contrib

from cnnjax.train import checks, durations
from cnnjax.train.checks import require

WEIGHT_DECAY_MASKS = ("kernels", "kernels_and_biases", "all", "none")
SCHEDULES = ("constant", "multistep", "plateau", "exponential", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings(checks.Section):
  """config.optimizer: the update rule and its hyperparameters."""

  name: str = "sgd"  # the only optimiser implemented
  learning_rate: float = 0.1  # the peak rate (after lr_scaling)
  lr_scaling: str = "none"  # "linear": lr = learning_rate * run.batch_size / lr_base_batch_size
  lr_base_batch_size: int = 256
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 1e-4
  # Which parameters decay: conv/dense "kernels" (modern default), also their
  # biases ("kernels_and_biases"), every parameter incl. BN ("all", Caffe's
  # default as used by AlexNet/VGG/GoogLeNet), or "none".
  weight_decay_mask: str = "kernels"
  grad_clip_norm: float = 0.0  # 0: no clipping
  ema_decay: float = 0.0  # Polyak/EMA averaging of params, evaluated separately; 0: off

  def check(self) -> None:
    checks.choose("optimizer.name", self.name, ("sgd",))
    checks.choose("optimizer.lr_scaling", self.lr_scaling, ("none", "linear"))
    checks.choose("optimizer.weight_decay_mask", self.weight_decay_mask, WEIGHT_DECAY_MASKS)
    require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "> 0")
    require(self.lr_base_batch_size >= 1, "optimizer.lr_base_batch_size",
            self.lr_base_batch_size, ">= 1")
    require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "0 <= momentum < 1")
    require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, ">= 0")
    require(self.grad_clip_norm >= 0, "optimizer.grad_clip_norm", self.grad_clip_norm,
            ">= 0 (0: off)")
    require(0 <= self.ema_decay < 1, "optimizer.ema_decay", self.ema_decay,
            "0 (off) <= decay < 1")


def _check_factor(path: str, factor: float) -> None:
  require(0 < factor < 1, path, factor, "0 < factor < 1")


@dataclasses.dataclass(frozen=True)
class MultistepSettings(checks.Section):
  """config.schedule.multistep: lr x factor at each boundary (steps win over epochs)."""

  boundaries_steps: tuple = ()
  boundaries_epochs: tuple = ()
  factor: float = 0.1

  def check(self) -> None:
    steps = list(self.boundaries_steps)
    require(all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= checks.INT32_RANGE[1]
                for v in steps), "schedule.multistep.boundaries_steps", steps,
            "positive integers")
    for key in ("boundaries_steps", "boundaries_epochs"):
      values = list(getattr(self, key))
      path = f"schedule.multistep.{key}"
      require(all(checks.is_number(v) and math.isfinite(v) and v > 0 for v in values), path,
              values, "positive numbers")
      require(values == sorted(values), path, values, "increasing boundaries")


@dataclasses.dataclass(frozen=True)
class PlateauSettings(checks.Section):
  """config.schedule.plateau: lr x factor when the validation error stops improving."""

  patience: int = 2  # evaluations without improvement before a reduction
  rtol: float = 1e-3  # relative improvement that counts
  max_reductions: int = 3
  factor: float = 0.1

  def check(self) -> None:
    require(self.patience >= 1, "schedule.plateau.patience", self.patience, ">= 1")
    require(0 < self.rtol < 1, "schedule.plateau.rtol", self.rtol, "0 < rtol < 1")
    require(self.max_reductions >= 0, "schedule.plateau.max_reductions", self.max_reductions,
            ">= 0")


@dataclasses.dataclass(frozen=True)
class ExponentialSettings(checks.Section):
  """config.schedule.exponential: lr x factor every `every` steps (or epochs)."""

  every_steps: int = -1
  every_epochs: float = -1.0
  factor: float = 0.1

  def check(self) -> None:
    durations.check_pair(self.every_steps, self.every_epochs, "schedule.exponential.every")


@dataclasses.dataclass(frozen=True)
class ErrorWarmupSettings(checks.Section):
  """config.schedule.error_warmup: ResNet-110's warm-up, lr x factor until a training
  batch's top-1 error drops below threshold. factor 0: off."""

  factor: float = 0.0
  threshold: float = 0.8

  def check(self) -> None:
    require(0 <= self.factor <= 1, "schedule.error_warmup.factor", self.factor, "0 (off) .. 1")
    require(0 < self.threshold <= 1, "schedule.error_warmup.threshold", self.threshold,
            "0 < threshold <= 1")


@dataclasses.dataclass(frozen=True)
class ScheduleSettings(checks.Section):
  """config.schedule: which learning-rate schedule, its warm-up, each schedule's settings.

  constant | multistep | plateau | exponential | warmup_cosine (linear
  warm-up, cosine to 0); the subtree of the schedule chosen is the one read.
  """

  name: str = "constant"
  warmup_steps: int = -1  # linear warm-up from 0 (any schedule)
  warmup_epochs: float = -1.0
  multistep: MultistepSettings = dataclasses.field(default_factory=MultistepSettings)
  plateau: PlateauSettings = dataclasses.field(default_factory=PlateauSettings)
  exponential: ExponentialSettings = dataclasses.field(default_factory=ExponentialSettings)
  error_warmup: ErrorWarmupSettings = dataclasses.field(default_factory=ErrorWarmupSettings)

  def check(self) -> None:
    checks.choose("schedule.name", self.name, SCHEDULES)
    durations.check_pair(self.warmup_steps, self.warmup_epochs, "schedule.warmup")
    if self.name in ("multistep", "plateau", "exponential"):  # the factor of the one chosen
      _check_factor(f"schedule.{self.name}.factor", getattr(self, self.name).factor)
    if self.name == "multistep":
      m = self.multistep
      require(bool(m.boundaries_steps or m.boundaries_epochs),
              "schedule.multistep.boundaries_steps", m.boundaries_steps,
              "schedule 'multistep' needs boundaries_steps or boundaries_epochs")
    if self.name == "exponential":
      e = self.exponential
      require(e.every_steps > 0 or e.every_epochs > 0, "schedule.exponential.every_steps",
              e.every_steps, "schedule 'exponential' needs every_steps or every_epochs > 0")


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


def base_learning_rate(settings: OptimizerSettings, batch_size: int) -> float:
  """The recipe's peak rate, after the linear scaling rule lr * batch / base_batch if chosen."""
  lr = float(settings.learning_rate)
  if settings.lr_scaling == "linear":
    lr *= batch_size / settings.lr_base_batch_size
  return lr


def create_optimizer(settings: OptimizerSettings, batch_size: int) -> optax.GradientTransformation:
  """SGD with momentum (Nesterov optional), masked weight decay, injected learning rate."""
  if settings.name != "sgd":
    raise ValueError(f"unknown optimizer {settings.name!r}; only 'sgd' is implemented")
  which = settings.weight_decay_mask
  return optax.inject_hyperparams(
      _sgd_chain, static_args=("nesterov", "mask", "clip_norm"))(
          learning_rate=base_learning_rate(settings, batch_size),
          momentum=float(settings.momentum),
          weight_decay=float(settings.weight_decay),
          nesterov=bool(settings.nesterov),
          mask=lambda params: weight_decay_mask(params, which),
          clip_norm=float(settings.grad_clip_norm))


def learning_rate_schedule(settings: ScheduleSettings, peak: float, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """The step-only part of the learning rate (see the module docstring); `peak`: the
  optimiser's `base_learning_rate`."""
  kind = settings.name
  warmup = durations.to_steps(settings.warmup_steps, settings.warmup_epochs, steps_per_epoch,
                              name="schedule.warmup")
  if kind in ("constant", "plateau"):
    schedule = optax.constant_schedule(peak)
  elif kind == "multistep":
    m = settings.multistep
    boundaries = durations.boundaries_to_steps(
        m.boundaries_steps, m.boundaries_epochs, steps_per_epoch,
        name="schedule.multistep.boundaries")
    scales: dict[int, float] = {}
    for b in boundaries:
      scales[b] = scales.get(b, 1.0) * float(m.factor)
    schedule = optax.piecewise_constant_schedule(peak, scales)
  elif kind == "exponential":
    e = settings.exponential
    every = durations.to_steps(e.every_steps, e.every_epochs, steps_per_epoch,
                               name="schedule.exponential.every")
    schedule = optax.exponential_decay(peak, transition_steps=max(every, 1),
                                       decay_rate=float(e.factor), staircase=True)
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


def plateau_transform(settings: PlateauSettings) -> optax.GradientTransformationExtraArgs:
  """optax's reduce-on-plateau, fed one validation error per evaluation."""
  factor = float(settings.factor)
  return optax.contrib.reduce_on_plateau(
      factor=factor, patience=int(settings.patience), rtol=float(settings.rtol),
      atol=0.0, cooldown=0, accumulation_size=1,
      min_scale=factor ** int(settings.max_reductions) * (1 - 1e-6))


@dataclasses.dataclass(frozen=True)
class LearningRateControl:
  """The data-dependent part of the learning rate (static; its state is an array pytree)."""

  plateau: optax.GradientTransformationExtraArgs | None = None
  error_warmup_factor: float = 0.0
  error_warmup_threshold: float = 0.8

  @classmethod
  def from_settings(cls, settings: ScheduleSettings) -> LearningRateControl:
    return cls(
        plateau=plateau_transform(settings.plateau) if settings.name == "plateau" else None,
        error_warmup_factor=float(settings.error_warmup.factor),
        error_warmup_threshold=float(settings.error_warmup.threshold))

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
