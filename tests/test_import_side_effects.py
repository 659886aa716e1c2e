"""Importing cnnjax changes nothing global.

A fresh interpreter imports the third-party packages cnnjax uses, snapshots
its environment variables and JAX's config values (the compilation cache options included), watches for anyone loading
the C library through ctypes (how `mallopt` is reached), imports every
module of the package (`cnnjax.data` brings TensorFlow, whose GPU hiding
changes no environment variable), and compares.
Process settings belong to train.py and the benchmark workers
(`cnnjax.xla_cpu.configure_process`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r'''
import ctypes, json, os, pkgutil, importlib, sys
# Third-party packages first: their own import-time settings (TensorFlow sets
# TF2_BEHAVIOR and TPU_ML_PLATFORM, for one) are theirs, not cnnjax's.
import jax, flax.linen, optax, orbax.checkpoint, ml_collections
import tensorflow, tensorflow_datasets
environ_before = dict(os.environ)
libc_loads = []
_cdll = ctypes.CDLL
class WatchedCDLL(_cdll):
  def __init__(self, name, *args, **kwargs):
    if name and "libc." in str(name):
      libc_loads.append(str(name))
    super().__init__(name, *args, **kwargs)
ctypes.CDLL = WatchedCDLL
def jax_options():
  values = dict(jax.config.values)
  return {k: repr(v) for k, v in values.items()}
config_before = jax_options()
import cnnjax
imported, skipped = [], []
for info in pkgutil.walk_packages(cnnjax.__path__, "cnnjax."):
  if info.name.rsplit(".", 1)[-1] == "__main__":
    skipped.append(info.name)
    continue
  importlib.import_module(info.name)
  imported.append(info.name)
environ_after = dict(os.environ)
config_after = jax_options()
print(json.dumps({
    "imported": imported, "skipped": skipped,
    "environ_changed": sorted(k for k in set(environ_before) | set(environ_after)
                              if environ_before.get(k) != environ_after.get(k)),
    "config_changed": sorted(k for k in config_before if config_before[k] != config_after.get(k)),
    "config_added": sorted(set(config_after) - set(config_before)),
    "cache_dir": config_after.get("jax_compilation_cache_dir"),
    "libc_loads": libc_loads,
}))
'''


def test_importing_every_cnnjax_module_changes_no_environment_or_jax_option():
  env = {key: value for key, value in os.environ.items()
         if key not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
  done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  # The walk reached the whole package, TensorFlow-backed data pipeline included.
  assert {"cnnjax.models.resnet", "cnnjax.models.cpu", "cnnjax.xla_cpu", "cnnjax.train.loop",
          "cnnjax.data"} <= set(report["imported"]), report["imported"]
  assert report["environ_changed"] == []
  assert report["config_changed"] == [] and report["config_added"] == []
  assert report["cache_dir"] in ("None", "''")
  assert report["libc_loads"] == []  # no mallopt
