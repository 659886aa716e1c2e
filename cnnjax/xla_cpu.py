"""XLA:CPU options that cnnjax sets before JAX starts its CPU backend.

`import cnnjax` appends these to the XLA_FLAGS environment variable, so they
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
import os

ENV = "CNNJAX_XLA_CPU_FLAGS"

# jaxlib "major.minor" -> flags. jaxlib 0.10: convolutions go to Eigen's
# multi-threaded kernels instead of the YNNPACK fusions, which run a
# convolution on one core (ResNet-50 v1.5 train step, batch 16, 224 px,
# 2-core AVX-512: 3.67 -> 3.17 s).
TUNED_FLAGS: dict[str, tuple[str, ...]] = {
    "0.10": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-dot",),
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
  if os.environ.get(ENV, "on").strip().lower() in ("off", "0", "false", "no"):
    return ()
  current = os.environ.get("XLA_FLAGS", "")
  added = tuple(flag for flag in tuned_flags() if flag.split("=", 1)[0] not in current)
  if added:
    os.environ["XLA_FLAGS"] = " ".join(part for part in (current.strip(), *added) if part)
  return added
