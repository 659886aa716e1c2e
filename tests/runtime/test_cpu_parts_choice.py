"""Who chooses the CPU model parts: `cnnjax.train.setup.create_model`, from
config.cpu_kernels and the process's backend, outside any trace."""

from __future__ import annotations

import jax
import pytest

from cnnjax.configs import base
from cnnjax.errors import ConfigError, ModelError
from cnnjax.models import cpu, layers
from cnnjax.train import config as config_lib
from cnnjax.train import setup


def _config(**overrides):
  config = base.get_base_config()
  config.num_classes = 10
  config.batch_size = 8
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def test_policies():
  assert cpu.wanted("auto", "cpu") and not cpu.wanted("auto", "gpu")
  assert cpu.wanted("on", "tpu") and not cpu.wanted("off", "cpu")
  with pytest.raises(ModelError, match="cpu_kernels='fast'"):
    cpu.wanted("fast", "cpu")


@pytest.mark.parametrize("policy", ["auto", "on", "off"])
def test_create_model_passes_the_cpu_parts_by_policy(policy):
  model = setup.create_model(_config(cpu_kernels=policy), num_devices=1)
  expected = cpu.wanted(policy, jax.default_backend())
  assert (model.conv is cpu.Conv) == expected
  assert (model.norm is cpu.BatchNorm) == expected
  if not expected:
    assert model.norm is layers.BatchNorm


def test_model_kwargs_win_over_the_cpu_parts():
  config = _config(cpu_kernels="on", model_kwargs={"activation": "tanh"})
  model = setup.create_model(config, num_devices=1)
  assert model.conv is cpu.Conv and model.activation == "tanh"


def test_a_workdir_config_without_the_key_gets_the_default():
  plain = config_lib.as_plain_dict(_config())
  del plain["cpu_kernels"]
  model = setup.create_model(plain, num_devices=1)
  assert (model.conv is cpu.Conv) == cpu.wanted("auto", jax.default_backend())


def test_config_validation_refuses_an_unknown_policy():
  with pytest.raises(ConfigError, match="cpu_kernels"):
    config_lib.validate(_config(cpu_kernels="fast"))
