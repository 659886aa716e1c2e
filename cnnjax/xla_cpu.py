"""Process-wide CPU settings: tuned XLA:CPU flags and glibc malloc settings.

Nothing here runs on import. A program's entry point calls
`configure_process()` first thing, before JAX starts its backend (train.py
and the benchmark workers do); a library user who wants the same opts in the
same way. Each setting has an off switch, read only by these functions:

1. `configure()`: tuned XLA flags appended to the XLA_FLAGS environment
   variable (`CNNJAX_XLA_CPU_FLAGS=off` keeps XLA's defaults). Measured on a
   2-core CPU, ResNet-50 train step, batch 16, 224 px: 1.07x (convolutions on
   Eigen's multi-threaded kernels) and 1.04-1.08x (XLA's memory-minimising
   scheduler), bit-identical results (benchmarks/RESULTS.md, train_step).
2. `configure_malloc()`: glibc malloc keeps freed memory, so XLA's per-step
   buffers are not faulted in again every step: 1.06-1.28x on the same step
   (`CNNJAX_CPU_MALLOC=off` keeps glibc's defaults; see its docstring for the
   memory trade-off).

The flags are chosen per jaxlib release, because XLA aborts the process on
a flag it does not know and these experimental flags change between
releases; a release without an entry gets none. A flag already present in
XLA_FLAGS is left as the user wrote it. They change only the CPU backend;
GPU/TPU programs ignore them. XLA reads XLA_FLAGS once, when its first
backend starts: calling `configure()` after JAX has run a computation is too
late for them to take effect.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import sys

from cnnjax.errors import ConfigError

ENV = "CNNJAX_XLA_CPU_FLAGS"
MALLOC_ENV = "CNNJAX_CPU_MALLOC"
_ON, _OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")


def _switched_on(name: str, environ) -> bool:
  """The on/off environment switch `name` (unset or empty: on)."""
  value = environ.get(name, "").strip().lower() or "on"
  if value in _ON:
    return True
  if value in _OFF:
    return False
  raise ConfigError(f"{name}={value!r} is not a switch; set it to on (the default) or off "
                    f"(also accepted: {', '.join(_ON[1:] + _OFF[1:])}), or unset it.")

# jaxlib "major.minor" -> flags. jaxlib 0.10 (ResNet-50 v1.5 train step, batch
# 16, 224 px, 2-core AVX-512): convolutions go to Eigen's multi-threaded
# kernels instead of the YNNPACK fusions, which run a convolution on one core
# (3.67 -> 3.17 s); and XLA's memory-minimising scheduler instead of the one
# that orders independent ops to run concurrently, which on two cores makes
# them compete for the same threads (1.08x and 1.04x in two interleaved runs,
# bit-identical results).
TUNED_FLAGS: dict[str, tuple[str, ...]] = {
    "0.10": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-dot",
             "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
}


def tuned_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
  """The flags cnnjax would add for this (or the given) jaxlib version."""
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
      return ()
  return TUNED_FLAGS.get(".".join(jaxlib_version.split(".")[:2]), ())


def configure_process() -> dict[str, tuple[str, ...]]:
  """Applies both settings (each unless switched off); returns what was applied.

  Call it first thing in a process, before JAX is imported.
  """
  return {"xla_flags": configure(), "malloc": configure_malloc()}


def configure() -> tuple[str, ...]:
  """Appends the tuned flags to XLA_FLAGS (unless disabled); returns those added."""
  if not _switched_on(ENV, os.environ):
    return ()
  current = os.environ.get("XLA_FLAGS", "")
  added = tuple(flag for flag in tuned_flags() if flag.split("=", 1)[0] not in current)
  if added:
    os.environ["XLA_FLAGS"] = " ".join(part for part in (current.strip(), *added) if part)
  return added


def _accelerator_installed(environ=os.environ) -> bool:
  """Whether JAX may pick a GPU/TPU backend (a PJRT plugin or libtpu is installed)."""
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return not platforms.startswith("cpu")
  if importlib.util.find_spec("libtpu") is not None:
    return True
  spec = importlib.util.find_spec("jax_plugins")
  if spec is None or not spec.submodule_search_locations:
    return False
  return any(True for _ in pkgutil.iter_modules(list(spec.submodule_search_locations)))


# mallopt(3) parameters (glibc's malloc.h) and the values `configure_malloc` sets.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", _M_ARENA_MAX, 1),  # every thread allocates from the main (brk) heap
    ("M_MMAP_MAX", _M_MMAP_MAX, 0),  # never serve a large block with its own mmap
    ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, -1),  # never hand the heap's top back
)


def configure_malloc(environ=None) -> tuple[str, ...]:
  """Makes glibc malloc keep freed memory for reuse; returns the settings applied.

  XLA:CPU mallocs each execution's temporary buffer (1.5 GB for a ResNet-50
  train step at batch 16) and frees it afterwards; glibc maps a block that
  large afresh and unmaps it on free, so every step faults it in again, 4 KiB
  at a time: ~400,000 minor faults and ~0.85 s of kernel time per 3.4 s step
  on a 2-core machine. With these settings the heap keeps the memory and later
  steps reuse it (0 faults): 1.06-1.28x on that step in four interleaved
  runs (benchmarks/RESULTS.md). The price: the process never returns
  freed memory to the OS, all threads share one malloc arena, and a freed block
  that a small allocation has split is not reused, so the heap can end larger
  than the old peak (resident memory 2.9-4.5 GiB against 2.7-3.0 GiB, steady
  over 40 steps once the first step has run).

  Applies on Linux with glibc when the CPU backend is expected (JAX_PLATFORMS
  unset or "cpu...", no GPU/TPU plugin installed) and `CNNJAX_CPU_MALLOC` is not
  "off". Call it first thing in a process, before importing JAX (threads that
  have already allocated keep their arena); `configure_process` does.
  """
  environ = os.environ if environ is None else environ
  if not _switched_on(MALLOC_ENV, environ):
    return ()
  if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
    return ()
  if _accelerator_installed(environ):
    return ()
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return ()
  return tuple(name for name, param, value in MALLOC_SETTINGS if libc.mallopt(param, value) == 1)
