"""Shared helpers of the training tests (importable from subprocess scripts too)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import flax.linen as nn
import numpy as np


def make_tiny_config(data_dir: str, **overrides):
  """The quickstart recipe shrunk to compile and run in seconds on a CPU."""
  from cnnjax.configs import quickstart
  config = quickstart.get_config()
  config.data_dir = data_dir
  config.model = "cifar_resnet20"
  config.model_kwargs = {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25}
  config.image_size = 16
  config.batch_size = 16
  config.eval_batch_size = 64
  config.eval_num_batches = 2
  config.num_steps = 6
  config.schedule = "constant"
  config.warmup_steps = -1
  config.learning_rate = 0.05
  config.log_every_steps = 2
  config.eval_every_steps = -1
  config.checkpoint_every_steps = -1
  config.progress_bar = False
  config.compilation_cache_dir = "none"
  for key, value in overrides.items():
    config[key] = value
  return config


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


def optimizer_config(**overrides):
  """A plain-dict config with the optimiser / schedule keys (no ml_collections needed)."""
  config = dict(
      optimizer="sgd", learning_rate=0.1, lr_scaling="none", batch_size=16,
      lr_base_batch_size=256, momentum=0.9, nesterov=False, weight_decay=1e-4,
      weight_decay_mask="kernels", grad_clip_norm=0.0, schedule="constant", lr_decay_factor=0.1,
      lr_boundaries_steps=(), lr_boundaries_epochs=(), lr_decay_every_steps=-1,
      lr_decay_every_epochs=-1.0, warmup_steps=-1, warmup_epochs=-1.0, plateau_patience=1,
      plateau_rtol=1e-3, plateau_max_reductions=3, error_warmup_factor=0.0,
      error_warmup_threshold=0.8, loss="categorical_cross_entropy", label_smoothing=0.0,
      aux_loss_weight=0.3, ema_decay=0.0)
  config.update(overrides)
  return config


@functools.lru_cache(maxsize=None)
def _components(model, image_shape, overrides):
  """(init, mesh) for one setting, built once so repeated states reuse compiled programs."""
  from cnnjax import sharding
  from cnnjax.train import optim, setup
  config = optimizer_config(**dict(overrides))
  tx = optim.create_optimizer(config)
  rules = setup.step_rules(config, steps_per_epoch=10, total_steps=100)
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
