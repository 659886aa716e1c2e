"""Who chooses the CPU model parts: `cnnjax.train.setup.create_model`, from
config.model.cpu_kernels and the process's backend, outside any trace."""

from __future__ import annotations

import jax
import pytest

from cnnjax.configs import base
from cnnjax.errors import ConfigError, ModelError
from cnnjax.models import cpu, layers
from cnnjax.train import config as config_lib
from cnnjax.train import setup


def _config(**model_settings):
  """The base config with 10 classes, a batch of 8 and these config.model settings."""
  config = base.get_base_config()
  config.model.num_classes = 10
  config.run.batch_size = 8
  config.run.num_steps = 1
  for key, value in model_settings.items():
    setattr(config.model, key, value)
  return config


def _model(config):
  settings = config_lib.validate(config)
  return setup.create_model(settings.model, batch_size=settings.run.batch_size, num_devices=1)


def test_policies():
  assert cpu.wanted("auto", "cpu") and not cpu.wanted("auto", "gpu")
  assert cpu.wanted("on", "tpu") and not cpu.wanted("off", "cpu")
  with pytest.raises(ModelError, match="cpu_kernels='fast'"):
    cpu.wanted("fast", "cpu")


@pytest.mark.parametrize("policy", ["auto", "on", "off"])
def test_create_model_passes_the_cpu_parts_by_policy(policy):
  model = _model(_config(cpu_kernels=policy))
  expected = cpu.wanted(policy, jax.default_backend())
  assert (model.conv is cpu.Conv) == expected
  assert (model.norm is cpu.BatchNorm) == expected
  if not expected:
    assert model.norm is layers.BatchNorm


def test_model_kwargs_win_over_the_cpu_parts():
  model = _model(_config(cpu_kernels="on", kwargs={"activation": "tanh"}))
  assert model.conv is cpu.Conv and model.activation == "tanh"


def test_a_workdir_config_without_the_key_gets_the_default():
  flat = config_lib.to_flat(_config().to_dict())  # a config.json of a version before the key
  del flat["cpu_kernels"]
  settings = config_lib.load(flat)
  model = setup.create_model(settings.model, batch_size=8, num_devices=1)
  assert (model.conv is cpu.Conv) == cpu.wanted("auto", jax.default_backend())


def test_config_validation_refuses_an_unknown_policy():
  with pytest.raises(ConfigError, match="model.cpu_kernels"):
    config_lib.validate(_config(cpu_kernels="fast"))
