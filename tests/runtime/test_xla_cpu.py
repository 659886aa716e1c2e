"""`cnnjax.xla_cpu`: the process settings train.py and the benchmark workers apply
(tuned XLA flags, malloc settings); `import cnnjax` applies none of them
(tests/test_import_side_effects.py)."""

from __future__ import annotations

import json
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


def test_configure_process_applies_both_settings_and_each_switch_turns_one_off():
  script = ("import json, os; from cnnjax import xla_cpu; applied = xla_cpu.configure_process(); "
            "print(json.dumps([applied, os.environ.get('XLA_FLAGS', '')]))")
  base = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  for key in (xla_cpu.ENV, xla_cpu.MALLOC_ENV):
    base.pop(key, None)
  runs = {}
  for name, extra in (("both", {}), ("no_flags", {xla_cpu.ENV: "off"}),
                      ("no_malloc", {xla_cpu.MALLOC_ENV: "off"})):
    done = subprocess.run([sys.executable, "-c", script], env={**base, **extra},
                          capture_output=True, text=True, timeout=120, check=True)
    runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
  flags = list(xla_cpu.tuned_flags())
  applied, xla_flags = runs["both"]
  assert applied["xla_flags"] == flags and xla_flags.split() == flags
  assert bool(applied["malloc"]) == GLIBC_LINUX
  assert runs["no_flags"][0]["xla_flags"] == [] and runs["no_flags"][1] == ""
  assert runs["no_flags"][0]["malloc"] == applied["malloc"]
  assert runs["no_malloc"][0] == {"xla_flags": flags, "malloc": []}
