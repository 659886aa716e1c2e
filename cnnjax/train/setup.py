"""From a config to the objects of a run: model, optimiser, step rules, initial state.

Kept apart from the loop so evaluation code can rebuild a trained model from
a workdir's config.json with the same rules (`create_model`). Needs jax,
flax, optax and cnnjax.models; the config may be any mapping with the keys of
`cnnjax/configs/base.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnjax.errors import ConfigError, ModelError
from cnnjax import sharding
from cnnjax.train import optim
from cnnjax.train.config import as_plain_dict
from cnnjax.train.state import StepRules, TrainState, init_train_state, no_nonfinite

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def bn_group_size(config: Mapping[str, Any], num_devices: int) -> int | None:
  """config.bn_group_size resolved: 0 -> per-device batch, -1 -> None (synchronised)."""
  value = int(config["bn_group_size"])
  if value == 0:
    return max(int(config["batch_size"]) // num_devices, 1)
  if value == -1:
    return None
  return value


def create_model(config: Mapping[str, Any], *, num_devices: int) -> nn.Module:
  """The flax module of a config: float32 params, config.dtype compute, BN groups set.

  With config.cpu_kernels "on", or "auto" (the default) when this process
  runs on the CPU backend, the model gets `cnnjax.models.cpu.parts()` (the
  CPU-tuned conv, norm and max pool; same variables and values), except
  for options config.model_kwargs sets. Decided here, once, outside any trace.

  Raises ConfigError naming config.model / config.model_kwargs when the
  registry or the module refuses them.
  """
  from cnnjax import models  # pylint: disable=g-import-not-at-top
  kwargs = as_plain_dict(config["model_kwargs"] or {})
  # Older workdirs' config.json has no cpu_kernels: they get the default.
  policy = config.get("cpu_kernels", "auto")
  cpu_parts = (models.cpu.parts() if models.cpu.wanted(policy, jax.default_backend())
               else {})
  if config["num_classes"] <= 0:
    raise ConfigError("config.num_classes must be resolved (> 0) before the model is built")
  try:
    spec = models.get_spec(config["model"])
    fields = models.allowed_overrides(spec.module)
    if "bn_group_size" in fields:  # validate refuses it in model_kwargs: one setting
      kwargs["bn_group_size"] = bn_group_size(config, num_devices)
    parts = {k: v for k, v in cpu_parts.items() if k in fields and k not in kwargs}
    return models.create(config["model"], num_classes=int(config["num_classes"]),
                         dtype=DTYPES[config["dtype"]], param_dtype=jnp.float32,
                         **kwargs, **parts)
  except (ModelError, TypeError, ValueError, KeyError, ZeroDivisionError) as e:
    raise ConfigError(
        f"config.model={config['model']!r} / config.model_kwargs={kwargs}: "
        f"{type(e).__name__}: {e}") from e


def step_rules(config: Mapping[str, Any], steps_per_epoch: int, total_steps: int) -> StepRules:
  """The static half of the train step: loss settings and the learning-rate rules."""
  return StepRules(
      learning_rate_fn=optim.learning_rate_schedule(config, steps_per_epoch, total_steps),
      lr_control=optim.LearningRateControl.from_config(config),
      loss=config["loss"],
      label_smoothing=float(config["label_smoothing"]),
      aux_loss_weight=float(config["aux_loss_weight"]),
      ema_decay=float(config["ema_decay"]))


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
