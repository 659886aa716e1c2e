"""Runs a few train steps of a tiny CIFAR ResNet on a mesh and saves the result.

Used by test_train_sharding.py in fresh processes, because the number of
(virtual CPU) devices is fixed when JAX starts:

  python sharding_worker.py single OUT.npz          # 1 process; compares 8 devices with 1
  python sharding_worker.py multi OUT.npz PORT I    # process I of 2, 4 devices each (gloo)
"""

from __future__ import annotations

import json
import os
import sys

MODE = sys.argv[1]
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                           + ("4" if MODE == "multi" else "8"))
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

if MODE == "multi":
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[3]}", num_processes=2,
                             process_id=int(sys.argv[4]), initialization_timeout=60)

from cnnjax import sharding  # noqa: E402
from cnnjax.train import checkpoint, setup, steps  # noqa: E402

GLOBAL_BATCH = 16
NUM_STEPS = 3
IMAGE_SHAPE = (16, 16, 3)


def make_config(bn_group_size: int):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from train_helpers import settings_with  # pylint: disable=g-import-not-at-top
  return settings_with(**{
      "model.name": "cifar_resnet20",
      "model.kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.25},
      "model.num_classes": 10, "model.dtype": "float32", "model.bn_group_size": bn_group_size,
      "run.batch_size": GLOBAL_BATCH, "optimizer.learning_rate": 0.1,
      "optimizer.ema_decay": 0.9})


def batches():
  rng = np.random.default_rng(0)
  for _ in range(NUM_STEPS):
    yield {"image": rng.normal(size=(GLOBAL_BATCH,) + IMAGE_SHAPE).astype(np.float32),
           "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)}


def train(devices, bn_group_size: int):
  """(state, mesh) after NUM_STEPS steps on a mesh of `devices` (this process feeds its rows)."""
  mesh = sharding.make_mesh(devices)
  from train_helpers import run_objects  # pylint: disable=g-import-not-at-top
  model, tx, rules = run_objects(make_config(bn_group_size), num_devices=len(devices))
  init = setup.state_initializer(model, tx, rules, IMAGE_SHAPE)
  state = setup.create_state(init, mesh, seed=0)
  train_fn, _, _ = steps.jit_for_mesh(mesh)
  per_process = GLOBAL_BATCH // jax.process_count()
  start = jax.process_index() * per_process
  for batch in batches():
    local = {k: v[start:start + per_process] for k, v in batch.items()}
    state, _ = train_fn(state, sharding.global_batch(local, mesh))
  return state, mesh, init


def flat(state) -> dict[str, np.ndarray]:
  from cnnjax.scoring.metrics import to_host  # pylint: disable=g-import-not-at-top
  tree = to_host({"params": state.params, "batch_stats": state.batch_stats,
                  "ema_params": state.ema_params})
  return {steps.path_name(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def max_difference(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def main():
  out = sys.argv[2]
  if MODE == "multi":
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    state, _, _ = train(jax.devices(), bn_group_size=-1)
    if jax.process_index() == 0:
      np.savez(out, **flat(state))
    return
  devices = jax.devices()
  assert len(devices) == 8
  report = {}
  sync8, mesh8, init = train(devices, bn_group_size=-1)  # synchronised BatchNorm
  sync1, _, _ = train(devices[:1], bn_group_size=-1)
  report["synchronised_8_vs_1"] = max_difference(flat(sync8), flat(sync1))
  report["params_replicated"] = all(
      x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(sync8.arrays()))
  # A checkpoint written from 8 devices restores onto a 1-device mesh.
  workdir = out + ".ckpt"
  store = checkpoint.CheckpointStore(workdir, keep=1)
  store.save(sync8.arrays(), {"step": NUM_STEPS})
  store.wait()
  abstract = sharding.abstract_replicated(init, sharding.make_mesh(devices[:1]),
                                          jax.random.PRNGKey(0))
  restored, _ = store.restore(abstract.arrays())
  store.close()
  restored_state = setup.rebuild_state(abstract, restored)
  report["restored_on_1_device"] = max_difference(flat(restored_state), flat(sync8))
  report["restored_devices"] = sorted({len(x.sharding.device_set)
                                       for x in jax.tree_util.tree_leaves(restored)})
  np.savez(out, **flat(sync8))
  print("REPORT " + json.dumps(report))


if __name__ == "__main__":
  main()
