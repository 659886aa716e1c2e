"""`cnnjax.xla_cpu`: the XLA flags and malloc settings `import cnnjax` applies on CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from cnnjax import xla_cpu

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


def test_thp_mode_is_read_from_the_kernel_setting(tmp_path):
  setting = tmp_path / "enabled"
  setting.write_text("always [madvise] never\n")
  assert xla_cpu.transparent_huge_pages_mode(str(setting)) == "madvise"
  setting.write_text("[always] madvise never\n")
  assert xla_cpu.transparent_huge_pages_mode(str(setting)) == "always"
  assert xla_cpu.transparent_huge_pages_mode(str(tmp_path / "missing")) == "never"


def test_huge_pages_environment_rules(monkeypatch):
  monkeypatch.setattr(xla_cpu, "_glibc_version", lambda: (2, 36))
  monkeypatch.setattr(xla_cpu, "transparent_huge_pages_mode", lambda: "madvise")
  base = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin"}
  env = xla_cpu.huge_pages_environment(base)
  assert env == {**base, "GLIBC_TUNABLES": xla_cpu.HUGE_PAGES_TUNABLE}
  assert base == {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin"}  # the input is not modified
  # Other tunables are kept; the user's own hugetlb setting wins; applied at most once.
  other = xla_cpu.huge_pages_environment({**base, "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
  assert other["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:" + xla_cpu.HUGE_PAGES_TUNABLE
  assert xla_cpu.huge_pages_environment(other) is None
  assert xla_cpu.huge_pages_environment({**base, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  # Not where it does not apply.
  assert xla_cpu.huge_pages_environment({**base, xla_cpu.HUGE_PAGES_ENV: "off"}) is None
  assert xla_cpu.huge_pages_environment({**base, "JAX_PLATFORMS": "cuda"}) is None
  monkeypatch.setattr(xla_cpu, "transparent_huge_pages_mode", lambda: "always")
  assert xla_cpu.huge_pages_environment(base) is None
  monkeypatch.setattr(xla_cpu, "transparent_huge_pages_mode", lambda: "madvise")
  monkeypatch.setattr(xla_cpu, "_glibc_version", lambda: (2, 34))
  assert xla_cpu.huge_pages_environment(base) is None


APPLIES = GLIBC_LINUX and xla_cpu.huge_pages_environment(
    {"JAX_PLATFORMS": "cpu"}) is not None
needs_thp = pytest.mark.skipif(
    not APPLIES, reason="needs Linux, glibc >= 2.35 and the kernel's THP mode 'madvise'")


@needs_thp
def test_reexec_keeps_the_process_and_adds_the_tunable():
  script = textwrap.dedent("""
      import os
      print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
      from cnnjax import xla_cpu
      xla_cpu.reexec_with_huge_pages()
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("GLIBC_TUNABLES", None)
  env.pop(xla_cpu.HUGE_PAGES_ENV, None)
  done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  lines = done.stdout.split("\n")
  assert lines[0].split() == [lines[0].split()[0], "None"]
  assert lines[1].split() == [lines[0].split()[0], xla_cpu.HUGE_PAGES_TUNABLE]  # same pid
  assert lines[2:] == [""]  # restarted once, not again


# Runs one jitted program with a 128 MiB result a few times (each result
# dropped before the next run) and prints the minor page faults of the last 3.
_FAULTS = textwrap.dedent("""
    import resource
    import cnnjax, jax, jax.numpy as jnp

    program = jax.jit(lambda x: x * 2.0 + 1.0)
    x = jnp.ones((32 * 1024 * 1024,), jnp.float32)
    for _ in range(3):
      program(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
      program(x).block_until_ready()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _repeat_faults(tunables: str) -> int:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": tunables}
  done = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return int(done.stdout.split()[-1])


@needs_thp
def test_huge_pages_cut_the_page_faults_of_xla_buffers():
  pages = 128 * 1024 * 1024 // 4096  # 32768 small pages per execution, 3 executions
  default_faults = _repeat_faults("")
  huge_faults = _repeat_faults(xla_cpu.HUGE_PAGES_TUNABLE)
  # glibc maps and unmaps each buffer: every 4 KiB page faults in again.
  assert default_faults > 2 * pages, default_faults
  # With huge pages a fault brings in 2 MiB (measured: ~1,700 against ~98,000).
  assert huge_faults < pages // 4, huge_faults
