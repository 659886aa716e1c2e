"""From a config to the objects of a run: model, optimiser, step rules, initial state.

Kept apart from the loop so evaluation code can rebuild a trained model from
a workdir's config.json with the same rules (`create_model`). The settings
read here: `ModelSettings` (config.model) and `LossSettings` (config.loss).
Needs jax, flax, optax and cnnjax.models.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnjax.errors import ConfigError, ModelError
from cnnjax import sharding
from cnnjax.scoring.losses import LOSSES
from cnnjax.train import checks, optim
from cnnjax.train.checks import require
from cnnjax.train.state import StepRules, TrainState, init_train_state, no_nonfinite

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelSettings(checks.Section):
  """config.model: which network, built how, started from what."""

  name: str = "cifar_resnet20"  # a name from cnnjax.models.list_models()
  kwargs: dict = dataclasses.field(default_factory=dict)  # forwarded to cnnjax.models.create
  num_classes: int = 0  # 0: the dataset's number of classes
  dtype: str = "float32"  # compute dtype; params, optimiser state and BN statistics stay float32
  # Examples per BatchNorm statistics group. 0: the per-device batch (the
  # papers' per-GPU statistics, no cross-device traffic); -1: synchronised
  # over the whole global batch; n > 0: groups of n examples.
  bn_group_size: int = 0
  init_from: str = ""  # a trained run's workdir or published weights ("keras/vgg16:<file>")
  # The CPU-tuned model parts (cnnjax.models.cpu: same variables and values,
  # a faster train step on XLA:CPU, benchmarks/RESULTS.md): "auto" uses them
  # when the process runs on the CPU backend, "on" always, "off" never.
  cpu_kernels: str = "auto"

  def check(self) -> None:
    if self.dtype == "float16":
      # float16 gradients underflow without loss scaling, which the train step does
      # not do; bfloat16 has float32's exponent range and needs none.
      raise ConfigError(
          "config.model.dtype='float16' is not supported: float16 training needs loss scaling, "
          "which cnnjax does not do. Use config.model.dtype='bfloat16' (same speed on current "
          "GPUs and TPUs, float32's range, no loss scaling) or 'float32'")
    checks.choose("model.dtype", self.dtype, ("float32", "bfloat16"))
    checks.choose("model.cpu_kernels", self.cpu_kernels, ("auto", "on", "off"))
    require(self.num_classes >= 0, "model.num_classes", self.num_classes,
            "0 (the dataset's) or > 0")
    require(self.bn_group_size >= -1, "model.bn_group_size", self.bn_group_size,
            "0 (per-device batch), -1 (synchronised over the global batch) or n > 0")
    require("bn_group_size" not in self.kwargs, "model.kwargs.bn_group_size",
            self.kwargs.get("bn_group_size"),
            "unset: the run's BatchNorm groups are config.model.bn_group_size (0, -1 or n > 0)")

  def check_batch(self, batch_size: int, num_devices: int | None) -> None:
    """BatchNorm groups must divide the per-device batch."""
    if self.bn_group_size > 0:
      per_device = batch_size // (num_devices or 1)
      require(per_device % self.bn_group_size == 0, "model.bn_group_size", self.bn_group_size,
              f"must divide the per-device batch {per_device}")


@dataclasses.dataclass(frozen=True)
class LossSettings(checks.Section):
  """config.loss: what the train step minimises."""

  name: str = "categorical_cross_entropy"
  label_smoothing: float = 0.0
  aux_weight: float = 0.3  # GoogLeNet's auxiliary classifiers

  def check(self) -> None:
    checks.choose("loss.name", self.name, LOSSES)
    require(0 <= self.label_smoothing < 1, "loss.label_smoothing", self.label_smoothing,
            "0 <= x < 1")
    require(self.aux_weight >= 0, "loss.aux_weight", self.aux_weight, ">= 0")


def bn_group_size(setting: int, batch_size: int, num_devices: int) -> int | None:
  """config.model.bn_group_size resolved: 0 -> per-device batch, -1 -> None (synchronised)."""
  value = int(setting)
  if value == 0:
    return max(int(batch_size) // num_devices, 1)
  if value == -1:
    return None
  return value


def create_model(settings: ModelSettings, *, batch_size: int, num_devices: int,
                 num_classes: int | None = None) -> nn.Module:
  """The flax module of config.model: float32 params, `dtype` compute, BN groups set.

  num_classes: the run's (the dataset's when settings.num_classes is 0);
  None: settings.num_classes, which must then be resolved (a stored config.json).
  With cpu_kernels "on", or "auto" (the default) when this process runs on
  the CPU backend, the model gets `cnnjax.models.cpu.parts()` (the CPU-tuned
  conv, norm and max pool; same variables and values), except for options
  `kwargs` sets. Decided here, once, outside any trace.

  Raises ConfigError naming config.model.name / kwargs when the registry or
  the module refuses them.
  """
  from cnnjax import models  # pylint: disable=g-import-not-at-top
  kwargs = checks.plain(settings.kwargs or {})
  cpu_parts = (models.cpu.parts() if models.cpu.wanted(settings.cpu_kernels,
                                                        jax.default_backend()) else {})
  num_classes = settings.num_classes if num_classes is None else num_classes
  if num_classes <= 0:
    raise ConfigError("config.model.num_classes must be resolved (> 0) before the model is built")
  try:
    spec = models.get_spec(settings.name)
    fields = models.allowed_overrides(spec.module)
    if "bn_group_size" in fields:  # validate refuses it in kwargs: one setting
      kwargs["bn_group_size"] = bn_group_size(settings.bn_group_size, batch_size, num_devices)
    parts = {k: v for k, v in cpu_parts.items() if k in fields and k not in kwargs}
    return models.create(settings.name, num_classes=int(num_classes),
                         dtype=DTYPES[settings.dtype], param_dtype=jnp.float32,
                         **kwargs, **parts)
  except (ModelError, TypeError, ValueError, KeyError, ZeroDivisionError) as e:
    raise ConfigError(
        f"config.model.name={settings.name!r} / config.model.kwargs={kwargs}: "
        f"{type(e).__name__}: {e}") from e


def step_rules(optimizer: optim.OptimizerSettings, schedule: optim.ScheduleSettings,
               loss: LossSettings, *, batch_size: int, steps_per_epoch: int,
               total_steps: int) -> StepRules:
  """The static half of the train step: loss settings and the learning-rate rules."""
  peak = optim.base_learning_rate(optimizer, batch_size)
  return StepRules(
      learning_rate_fn=optim.learning_rate_schedule(schedule, peak, steps_per_epoch, total_steps),
      lr_control=optim.LearningRateControl.from_settings(schedule),
      loss=loss.name,
      label_smoothing=float(loss.label_smoothing),
      aux_loss_weight=float(loss.aux_weight),
      ema_decay=float(optimizer.ema_decay))


def state_initializer(model: nn.Module, tx: optax.GradientTransformation, rules: StepRules,
                      image_shape: tuple[int, ...]):
  """A pure function rng -> TrainState, for jit with out_shardings or eval_shape."""
  def init(rng):
    return init_train_state(model, tx, rules, rng, jnp.zeros((1,) + tuple(image_shape),
                                                              jnp.float32))
  return init


def _init_rng_mode():
  """Non-partitionable threefry for the init: the same numbers on any mesh (the
  output is replicated), and 4-5x faster XLA compilation of a model's init on
  CPU. A no-op on JAX versions without the switch."""
  switch = getattr(jax, "threefry_partitionable", None)
  return switch(False) if switch is not None else contextlib.nullcontext()


def create_state(init, mesh, seed: int) -> TrainState:
  """Runs `init` under jit, every array created replicated on `mesh`, in place."""
  with _init_rng_mode():
    return sharding.create_replicated(init, mesh, jax.random.PRNGKey(seed))


def rebuild_state(template: TrainState, arrays: Mapping[str, Any]) -> TrainState:
  """`template` with its array fields replaced (e.g. by restored checkpoint arrays)
  and a clean `first_nonfinite` record, placed like the template's."""
  record = no_nonfinite()
  sharding = getattr(template.first_nonfinite, "sharding", None)
  if sharding is not None:
    record = jax.device_put(record, sharding)
  return template.replace(first_nonfinite=record, **{k: arrays[k] for k in template.arrays()})


def abstract_state(init, rng_seed: int) -> TrainState:
  """The state's shapes and dtypes without computing anything."""
  return jax.eval_shape(init, jax.random.PRNGKey(rng_seed))
