"""XLA:CPU options that cnnjax sets before JAX starts its CPU backend.

Two settings:

1. `configure()`, run by `import cnnjax`: tuned XLA flags (below).
2. `reexec_with_huge_pages()`, run by the command-line entry points (train.py,
   `python -m cnnjax.evaluate`, the benchmark workers) before anything else:
   glibc malloc backs large blocks with transparent huge pages
   (`CNNJAX_HUGE_PAGES=off` keeps glibc's defaults; see its docstring).

The flags: `import cnnjax` appends them to the XLA_FLAGS environment variable, so they
reach every program the process compiles (train.py, evaluation, notebooks,
benchmarks). They are chosen per jaxlib release, because XLA aborts the
process on a flag it does not know and these experimental flags change
between releases; a release without an entry gets none. A flag already
present in XLA_FLAGS is left as the user wrote it, and `CNNJAX_XLA_CPU_FLAGS=off`
keeps XLA's defaults. They change only the CPU backend; GPU/TPU programs
ignore them. Importing cnnjax after JAX has already run a computation is too
late for them to take effect (XLA reads XLA_FLAGS once, when it starts).

Measured effect: benchmarks/RESULTS.md (section train_step).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import re
import sys

ENV = "CNNJAX_XLA_CPU_FLAGS"
HUGE_PAGES_ENV = "CNNJAX_HUGE_PAGES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_OFF = ("off", "0", "false", "no")

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


def configure() -> tuple[str, ...]:
  """Appends the tuned flags to XLA_FLAGS (unless disabled); returns those added."""
  if os.environ.get(ENV, "on").strip().lower() in _OFF:
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


def transparent_huge_pages_mode(path: str = THP_SETTING) -> str:
  """The kernel's transparent-huge-page mode: "always", "madvise" or "never"."""
  try:
    with open(path, encoding="ascii") as setting:
      chosen = re.search(r"\[(\w+)\]", setting.read())
  except OSError:
    return "never"
  return chosen.group(1) if chosen else "never"


def _glibc_version() -> tuple[int, ...]:
  library, version = platform.libc_ver()
  if library != "glibc" or not sys.platform.startswith("linux"):
    return ()
  return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def huge_pages_environment(environ=None) -> dict[str, str] | None:
  """`environ` (default: this process's) plus glibc's huge-page tunable, or
  None where it does not apply or is already set.

  XLA:CPU mallocs each execution's temporary buffer (1.5 GB for a ResNet-50
  train step at batch 16) and frees it afterwards; glibc maps a block that
  large afresh and unmaps it on free, so every step faults it in again in 4 KiB
  pages (~400,000 minor faults and ~0.85 s of kernel time per 3.4 s step on
  a 2-core machine). With GLIBC_TUNABLES=glibc.malloc.hugetlb=1 glibc asks for
  transparent huge pages (madvise): 2 MiB pages, ~3,000 faults and 0.2 s, and
  fewer TLB misses in the step itself. It applies on Linux with glibc >= 2.35
  where the kernel's THP mode is "madvise" ("always" already gives huge pages,
  "never" cannot), when the CPU backend is expected (JAX_PLATFORMS unset or
  "cpu...", no GPU/TPU plugin installed), `CNNJAX_HUGE_PAGES` is not "off" and
  GLIBC_TUNABLES does not set the tunable already (a user's value wins).
  glibc reads GLIBC_TUNABLES only when a process starts.
  """
  environ = dict(os.environ if environ is None else environ)
  if environ.get(HUGE_PAGES_ENV, "on").strip().lower() in _OFF:
    return None
  if _glibc_version() < (2, 35) or transparent_huge_pages_mode() != "madvise":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables or _accelerator_installed(environ):
    return None
  environ["GLIBC_TUNABLES"] = ":".join(part for part in (tunables, HUGE_PAGES_TUNABLE) if part)
  return environ


def reexec_with_huge_pages() -> None:
  """Restarts this process with `huge_pages_environment()` where it applies.

  `os.execve` keeps the process id, open files and the command line
  (`sys.orig_argv`), so a launcher or scheduler sees no difference; call it
  first thing in an entry point, before any work that would be repeated.
  Returns normally where nothing applies (including after the restart).
  """
  environment = huge_pages_environment()
  if environment is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environment)
