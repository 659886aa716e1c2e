"""CheckpointStore on its own: one orbax manager keeping the latest N plus the best.

No training: tiny pytrees, so these run in seconds and double as the check of
the oldest orbax-checkpoint release pyproject.toml admits (docs/training.md, "Checkpoints and orbax versions").
"""

from __future__ import annotations

import inspect
import logging
import os

import jax
import numpy as np
import pytest

from cnnjax.errors import CheckpointError
from cnnjax.train import checkpoint
from cnnjax.train import checkpoint_integrity as integrity


def _arrays(value: float) -> dict:
  return {"step": np.asarray(0, np.int32), "rng": np.zeros((2,), np.uint32),
          "lr_control": {}, "params": {"conv": {"kernel": np.full((3, 3, 1, 2), value, np.float32)},
                                       "dense": [np.full((4,), value, np.float32)]},
          "batch_stats": {}, "ema_params": {}, "opt_state": ({"mu": np.full((4,), value)},)}


def _meta(step: int, best_error: float = float("inf")) -> dict:
  return {"step": step, "best_eval_error": best_error}


def _committed(workdir) -> list[int]:
  return checkpoint._steps_in(os.path.join(workdir, checkpoint.LATEST_DIR))  # pylint: disable=protected-access


def _save_all(store, plan):
  """plan: [(step, best_error or None)]; None saves a plain (latest) checkpoint."""
  for step, error in plan:
    if error is None:
      store.save(_arrays(step), _meta(step))
    else:
      store.save(_arrays(step), _meta(step, error), best=True)
  store.wait()


def test_latest_n_and_the_best_are_kept_by_one_manager(tmp_path):
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    _save_all(store, [(1, None), (2, 0.5), (3, None), (4, 0.7), (5, None), (6, None)])
    assert _committed(workdir) == [2, 5, 6]  # latest two + the lowest error (step 4 was worse)
    assert store.best_step() == 2 and store.latest_step() == 6
    assert store.read_meta(best=True)["step"] == 2
  finally:
    store.close()
  for step in _committed(workdir):
    step_dir = os.path.join(workdir, checkpoint.LATEST_DIR, str(step))
    assert integrity.has_manifest(step_dir) and integrity.find_problem(step_dir) is None
  variables, meta = checkpoint.restore_variables(workdir, which="best")
  assert meta["step"] == 2
  np.testing.assert_array_equal(variables["params"]["dense"][0], np.full((4,), 2.0))
  assert not os.path.exists(os.path.join(workdir, checkpoint.LEGACY_BEST_DIR))


@pytest.mark.parametrize("order", ["best first", "latest first"])
def test_a_last_step_that_is_newest_and_best_commits_once(tmp_path, order):
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=1)
  try:
    store.save(_arrays(1), _meta(1, 0.9), best=True)
    if order == "best first":
      store.save(_arrays(2), _meta(2, 0.4), best=True)
      store.save(_arrays(2), _meta(2, 0.4))  # a no-op: step 2 is saved
    else:  # saved, then found to be the best: written again with its metric
      store.save(_arrays(2), _meta(2, 0.9))
      store.save(_arrays(2), _meta(2, 0.4), best=True)
    store.wait()
    assert store.best_step() == store.latest_step() == 2
  finally:
    store.close()
  assert _committed(workdir) == [2]
  assert checkpoint.restore_variables(workdir, which="best")[1]["step"] == 2


def test_restore_places_arrays_on_the_target_shardings(tmp_path):
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=1)
  try:
    _save_all(store, [(3, None)])
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=device),
        _arrays(0))
    arrays, meta = store.restore(abstract, 3)
  finally:
    store.close()
  assert meta["step"] == 3
  np.testing.assert_array_equal(arrays["params"]["conv"]["kernel"], np.full((3, 3, 1, 2), 3.0))
  assert meta["structure"]["params"] == {"conv/kernel": [3, 3, 1, 2], "dense/0": [4]}


def test_an_emptied_newest_step_is_moved_aside_before_orbax_reads_it(tmp_path, caplog):
  """Every file of the newest step emptied (a half-finished copy): orbax parses each step's
  metrics while its manager is built, so the step must be moved aside before that."""
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    _save_all(store, [(20, 0.5), (40, 0.4)])
  finally:
    store.close()
  newest = os.path.join(workdir, checkpoint.LATEST_DIR, "40")
  assert os.path.isdir(os.path.join(newest, "metrics"))
  for root, _, files in os.walk(newest):
    for name in files:
      open(os.path.join(root, name), "w").close()
  with caplog.at_level(logging.WARNING):
    store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    assert store.newest_restorable_step() == 20
    assert store.best_step() == 20
  finally:
    store.close()
  assert _committed(workdir) == [20]
  assert "step 40" in caplog.text and checkpoint.QUARANTINE_DIR in caplog.text
  assert os.listdir(os.path.join(workdir, checkpoint.QUARANTINE_DIR))


def test_a_checkpoint_that_lost_its_manifest_is_damaged(tmp_path):
  """This version records the manifest in the checkpoint's own metadata: without the file
  the checkpoint cannot prove itself, whatever TensorStore would make of its data."""
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    _save_all(store, [(1, None), (2, None)])
  finally:
    store.close()
  step_dir = os.path.join(workdir, checkpoint.LATEST_DIR, "2")
  os.remove(os.path.join(step_dir, integrity.MANIFEST_FILE))
  assert "manifest" in checkpoint.checkpoint_problem(step_dir)
  with pytest.raises(CheckpointError, match="manifest"):
    checkpoint.restore_variables(workdir, step=2)
  store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    assert store.newest_restorable_step() == 1
  finally:
    store.close()


def test_best_before_any_validation_is_a_checkpoint_error(tmp_path):
  workdir = str(tmp_path)
  store = checkpoint.CheckpointStore(workdir, keep=1)
  try:
    _save_all(store, [(1, None)])
    with pytest.raises(CheckpointError, match="no best checkpoint"):
      store.read_meta(best=True)
  finally:
    store.close()
  with pytest.raises(CheckpointError, match="no best checkpoint.*which='latest'"):
    checkpoint.restore_variables(workdir, which="best")


def test_the_manifest_hook_follows_orbax_finalize_whether_coroutine_or_not(tmp_path):
  cls = integrity.manifested_temporary_path_class(str(tmp_path))
  base = cls.__mro__[1]
  assert inspect.iscoroutinefunction(cls.finalize) == inspect.iscoroutinefunction(base.finalize)

  class SyncFinalize(base):
    def finalize(self, *args, **kwargs):  # pylint: disable=invalid-overridden-method
      return None

  class NoFinalize:
    finalize = None

  original = integrity._default_temporary_path_class  # pylint: disable=protected-access
  try:
    integrity._default_temporary_path_class = lambda directory: SyncFinalize  # pylint: disable=protected-access
    synchronous = integrity.manifested_temporary_path_class(str(tmp_path))
    assert not inspect.iscoroutinefunction(synchronous.finalize)
    integrity._default_temporary_path_class = lambda directory: NoFinalize  # pylint: disable=protected-access
    with pytest.raises(CheckpointError, match="finalize.*orbax-checkpoint version"):
      integrity.manifested_temporary_path_class(str(tmp_path))
  finally:
    integrity._default_temporary_path_class = original  # pylint: disable=protected-access


def test_object_store_paths_get_orbax_commit_file_class():
  """On gs:// orbax commits with a marker file, not a rename; the manifest hook follows it."""
  cls = integrity.manifested_temporary_path_class("gs://bucket/run/checkpoints")
  assert cls.__mro__[1].__name__ == "CommitFileTemporaryPath"
  local = integrity.manifested_temporary_path_class("/tmp/run/checkpoints")
  assert local.__mro__[1].__name__ == "AtomicRenameTemporaryPath"


def test_orbax_does_not_warn_about_metrics_at_every_plain_save(tmp_path, caplog):
  store = checkpoint.CheckpointStore(str(tmp_path), keep=1)
  try:
    with caplog.at_level(logging.WARNING):
      _save_all(store, [(1, None), (2, None)])
  finally:
    store.close()
  assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()]
