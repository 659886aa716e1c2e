"""JAX's persistent compilation cache: a process setting, turned on by train.py.

A second run of the same config then skips XLA compilation (seconds to
minutes for deep nets). Importing cnnjax never turns it on; `train.py`'s
main() does, and `run()` does when a config names a directory explicitly.
"""

from __future__ import annotations

import os

import jax

from cnnjax.errors import ConfigError

COMPILATION_CACHE_ENV = "CNNJAX_COMPILATION_CACHE_DIR"
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "cnnjax", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory.

  The directory is `path`, else $CNNJAX_COMPILATION_CACHE_DIR, else
  ~/.cache/cnnjax/jax. "none" turns the cache off (and returns None).
  """
  path = path or os.environ.get(COMPILATION_CACHE_ENV) or DEFAULT_COMPILATION_CACHE
  if path.lower() == "none":
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f"{path} is not writable")
  except OSError as e:
    raise ConfigError(
        f"config.run.compilation_cache_dir={path!r} is not usable ({e}); choose a writable "
        f"directory (or ${COMPILATION_CACHE_ENV}), or 'none' to turn the cache off") from e
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path
