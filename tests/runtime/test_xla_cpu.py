"""`cnnjax.xla_cpu`: the XLA flags `import cnnjax` sets and train.py's malloc settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from cnnjax import xla_cpu
from cnnjax.errors import ConfigError

GLIBC_LINUX = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_tuned_xla_flags_are_per_release(monkeypatch):
  assert xla_cpu.tuned_flags("0.10.2")
  assert xla_cpu.tuned_flags("99.1.0") == ()  # unknown releases get no experimental flags
  user_flag = "--xla_cpu_experimental_ynn_fusion_type=+reduce"
  monkeypatch.setenv("XLA_FLAGS", user_flag)
  monkeypatch.setenv(xla_cpu.ENV, "on")
  added = xla_cpu.configure()
  # The user's own setting of a flag wins; the others are appended after it.
  assert not any(flag.startswith("--xla_cpu_experimental_ynn_fusion_type") for flag in added)
  assert os.environ["XLA_FLAGS"].split() == [user_flag, *added]
  monkeypatch.setenv(xla_cpu.ENV, "off")
  monkeypatch.setenv("XLA_FLAGS", "")
  assert xla_cpu.configure() == ()


@pytest.mark.parametrize("name", [xla_cpu.ENV, xla_cpu.MALLOC_ENV])
def test_switches_refuse_values_that_are_neither_on_nor_off(monkeypatch, name):
  monkeypatch.setenv(name, "fastest")
  with pytest.raises(ConfigError, match=f"{name}='fastest' is not a switch; set it to on"):
    xla_cpu.configure() if name == xla_cpu.ENV else xla_cpu.configure_malloc()


def test_malloc_settings_are_cpu_only_and_can_be_turned_off():
  assert xla_cpu.configure_malloc({"JAX_PLATFORMS": "cpu", xla_cpu.MALLOC_ENV: "off"}) == ()
  assert xla_cpu.configure_malloc({"JAX_PLATFORMS": "cuda"}) == ()
  assert xla_cpu.configure_malloc({"JAX_PLATFORMS": "tpu,cpu"}) == ()


@pytest.mark.skipif(not GLIBC_LINUX, reason="the malloc settings are for Linux with glibc")
def test_malloc_settings_apply_in_a_fresh_process():
  script = "from cnnjax import xla_cpu; print(' '.join(xla_cpu.configure_malloc()))"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop(xla_cpu.MALLOC_ENV, None)
  done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  assert done.stdout.split() == [name for name, _, _ in xla_cpu.MALLOC_SETTINGS]
