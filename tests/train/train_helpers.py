"""Shared helpers of the training tests (importable from subprocess scripts too)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import flax.linen as nn
import numpy as np


def set_values(config, values):
  """Sets each `values` item on `config` (a ConfigDict or nested dict), in place.

  A key is a setting's path ("optimizer.learning_rate") or a name of the flat
  layout ("learning_rate"), placed through cnnjax.train.config.FLAT_TO_NESTED
  (the table that also reads old workdirs' config.json).
  """
  from cnnjax.train.config import FLAT_TO_NESTED
  for key, value in values.items():
    for path in FLAT_TO_NESTED.get(key, (key,)):
      *parents, leaf = path.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[leaf] = value
  return config


def make_tiny_config(data_dir: str, **overrides):
  """The quickstart recipe shrunk to compile and run in seconds on a CPU
  (overrides: see `set_values`)."""
  from cnnjax.configs import quickstart
  config = quickstart.get_config()
  set_values(config, {
      "input.data_dir": data_dir,
      "model.name": "cifar_resnet20",
      "model.kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
      "input.image_size": 16,
      "run.batch_size": 16,
      "eval.batch_size": 64,
      "eval.num_batches": 2,
      "run.num_steps": 6,
      "schedule.name": "constant",
      "schedule.warmup_steps": -1,
      "optimizer.learning_rate": 0.05,
      "run.log_every_steps": 2,
      "eval.every_steps": -1,
      "checkpoint.every_steps": -1,
      "run.progress_bar": False,
      "run.compilation_cache_dir": "none",
  })
  return set_values(config, overrides)


class TinyNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> mean -> dropout -> Dense, honouring the model contract."""
  num_classes: int = 10
  bn_group_size: int | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    x = nn.Conv(8, (3, 3), dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float32)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dropout(0.1, deterministic=not train)(x)
    pre_logits = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
    return (logits, {"pre_logits": pre_logits}) if features else logits


def optimizer_settings(**overrides):
  """(optimizer, schedule, loss) settings of the base config with `overrides` (see
  `set_values`), validated by their own checks (no ml_collections needed)."""
  from cnnjax.train import checks
  from cnnjax.train import config as config_lib
  tree = config_lib.defaults()
  set_values(tree, {"run.batch_size": 16, "schedule.plateau.patience": 1, **overrides})
  optimizer = checks.build(config_lib.OptimizerSettings, tree["optimizer"], "optimizer")
  schedule = checks.build(config_lib.ScheduleSettings, tree["schedule"], "schedule")
  loss = checks.build(config_lib.LossSettings, tree["loss"], "loss")
  return optimizer, schedule, loss, tree["run"]["batch_size"]


def settings_with(**overrides):
  """The base config's Settings with `overrides` (see `set_values`), checked as
  `validate` checks them (no devices, no ml_collections needed)."""
  from cnnjax.train import checks
  from cnnjax.train import config as config_lib
  tree = config_lib.defaults()
  set_values(tree, {"run.num_steps": 10, **overrides})
  return checks.build(config_lib.Settings, tree, "")


def run_objects(settings, num_devices=1, steps_per_epoch=10, total_steps=100):
  """(model, optimiser, step rules) of `settings`, as the loop makes them."""
  from cnnjax.train import optim, setup
  batch_size = settings.run.batch_size
  model = setup.create_model(settings.model, batch_size=batch_size, num_devices=num_devices)
  tx = optim.create_optimizer(settings.optimizer, batch_size)
  rules = setup.step_rules(settings.optimizer, settings.schedule, settings.loss,
                           batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
  return model, tx, rules


def step_rules(steps_per_epoch=10, total_steps=100, **overrides):
  """The StepRules of `optimizer_settings(**overrides)`."""
  from cnnjax.train import setup
  optimizer, schedule, loss, batch_size = optimizer_settings(**overrides)
  return setup.step_rules(optimizer, schedule, loss, batch_size=batch_size,
                          steps_per_epoch=steps_per_epoch, total_steps=total_steps)


@functools.lru_cache(maxsize=None)
def _components(model, image_shape, overrides):
  """(init, mesh) for one setting, built once so repeated states reuse compiled programs."""
  from cnnjax import sharding
  from cnnjax.train import optim, setup
  optimizer, _, _, batch_size = optimizer_settings(**dict(overrides))
  tx = optim.create_optimizer(optimizer, batch_size)
  rules = step_rules(**dict(overrides))
  return setup.state_initializer(model, tx, rules, image_shape), sharding.make_mesh()


def tiny_state(model=None, *, image_shape=(8, 8, 3), seed=0, **config_overrides):
  """(state, mesh) of TinyNet with an optimiser built from `optimizer_config`.

  States of the same setting share their static parts (model, optimiser,
  rules), so the jitted steps compile once per setting.
  """
  from cnnjax.train import setup
  init, mesh = _components(model or TinyNet(), tuple(image_shape),
                           tuple(sorted(config_overrides.items())))
  return setup.create_state(init, mesh, seed), mesh


def random_batch(batch_size=16, image_shape=(8, 8, 3), num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch_size,) + tuple(image_shape)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  return {"image": images, "label": labels}
