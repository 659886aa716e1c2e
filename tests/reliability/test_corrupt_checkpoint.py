"""Promise 2: a damaged checkpoint is detected before anything reads it, never half-restored.

Each case copies the reference run's workdir (checkpoints at steps 39 and
40), damages the newest checkpoint the way disks, copies and clean-up
scripts do, and resumes. The run must fall back to step 39 with a warning
naming both steps and move the damaged one aside, before orbax lists the
steps (it parses every step's metrics while its manager is built); with
nothing intact left it must stop with CheckpointError instead of silently
starting from scratch. A checkpoint that lost its manifest is damaged too;
only one written before manifests existed is read unverified, with a warning.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest
from reliability_helpers import KILL_RUN, committed_steps, leaves

from cnnjax.errors import CheckpointError
from cnnjax.train import checkpoint
from cnnjax.train import checkpoint_integrity as integrity
from cnnjax.train import run

NEWEST, PREVIOUS = 40, 39


def _largest_file(step_dir: str, item: str) -> str:
  files = [p for p in glob.glob(os.path.join(step_dir, item, "**", "*"), recursive=True)
           if os.path.isfile(p) and os.path.basename(p) not in integrity.UNCOVERED_FILES]
  return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path: str) -> None:
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def _empty_every_file(step_dir: str) -> None:
  """A half-finished copy, or a filesystem that lost the data of a whole directory."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      open(os.path.join(root, name), "w").close()


def _item_data_files(step_dir: str, item: str) -> list[str]:
  """The array data of an item: orbax's OCDBT data files (d/<hash>)."""
  return sorted(p for p in glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True)
                if os.path.isfile(p))


def _flip_without_manifest(step_dir: str) -> None:
  _flip_byte(_item_data_files(step_dir, "params")[0])
  os.remove(os.path.join(step_dir, integrity.MANIFEST_FILE))


def _zero_fill(path: str) -> None:
  """What a crash before the page cache reached the disk often leaves: the size, no data."""
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(b"\0" * size)


DAMAGE = {
    "truncated params data": lambda d: _truncate(_largest_file(d, "params")),
    "deleted params data": lambda d: os.remove(_largest_file(d, "params")),
    "flipped byte in optimizer state": lambda d: _flip_byte(_largest_file(d, "opt_state")),
    "zero-filled BatchNorm statistics": lambda d: _zero_fill(_largest_file(d, "batch_stats")),
    "truncated metadata": lambda d: _truncate(_largest_file(d, "meta")),
    "deleted item folder": lambda d: shutil.rmtree(os.path.join(d, "progress")),
    "emptied manifest": lambda d: open(os.path.join(d, integrity.MANIFEST_FILE), "w").close(),
    "every file emptied": _empty_every_file,
    "flipped params byte, manifest deleted": _flip_without_manifest,
    "manifest deleted": lambda d: os.remove(os.path.join(d, integrity.MANIFEST_FILE)),
}


@pytest.fixture()
def copy_of_reference(reference_run, tmp_path):
  source, _ = reference_run
  # The latest two, plus the best one when it is older.
  assert committed_steps(os.path.join(source, checkpoint.LATEST_DIR))[-2:] == [PREVIOUS, NEWEST]

  def make(name: str) -> str:
    target = str(tmp_path / name.replace(" ", "_"))
    shutil.copytree(source, target)
    return target
  return make


def test_every_saved_checkpoint_has_a_verifiable_manifest(reference_run):
  workdir, _ = reference_run
  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  assert committed_steps(directory)
  for step in committed_steps(directory):
    step_dir = os.path.join(directory, str(step))
    assert integrity.has_manifest(step_dir), step_dir
    assert integrity.find_problem(step_dir) is None
    covered = integrity.covered_files(step_dir)
    assert any(path.startswith("params" + os.sep) for path in covered), covered


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_detected_and_moved_aside(damage, copy_of_reference, caplog):
  workdir = copy_of_reference(damage)
  newest_dir = os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST))
  DAMAGE[damage](newest_dir)
  problem = integrity.find_problem(newest_dir, required_items=checkpoint.STATE_ITEMS[:1])
  assert problem, f"{damage} went unnoticed"

  with caplog.at_level(logging.WARNING):
    store = checkpoint.CheckpointStore(workdir)  # verifies before orbax lists the steps
  try:
    step = store.newest_restorable_step()
  finally:
    store.close()
  assert step == PREVIOUS
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert f"step {NEWEST}" in warning and f"step {PREVIOUS}" in warning, warning
  remaining = committed_steps(os.path.join(workdir, checkpoint.LATEST_DIR))
  assert NEWEST not in remaining and PREVIOUS in remaining, remaining
  moved = glob.glob(os.path.join(workdir, checkpoint.QUARANTINE_DIR, f"*{NEWEST}*"))
  assert len(moved) == 1, "the damaged checkpoint should be kept aside for inspection"


def test_run_resumes_from_the_previous_good_checkpoint(copy_of_reference, tiny_config, caplog):
  workdir = copy_of_reference("resume")
  _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST)), "params"))
  expected, _ = checkpoint.restore_variables(workdir, step=PREVIOUS)
  with caplog.at_level(logging.WARNING):
    summary = run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  assert summary["step"] == PREVIOUS and summary["interrupted"]
  assert any(f"step {NEWEST}" in r.getMessage() and f"step {PREVIOUS}" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  restored, meta = checkpoint.restore_variables(workdir)
  assert meta["step"] == PREVIOUS
  for a, b in zip(leaves(restored), leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_no_intact_checkpoint_stops_instead_of_starting_over(copy_of_reference, tiny_config,
                                                             monkeypatch):
  workdir = copy_of_reference("all_damaged")
  saved = committed_steps(os.path.join(workdir, checkpoint.LATEST_DIR))
  for step in saved:
    _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(step)), "params"))
  from cnnjax.train import loop

  def no_fresh_start(*args, **kwargs):
    raise AssertionError("started from scratch over damaged checkpoints")
  monkeypatch.setattr(loop.setup, "create_state", no_fresh_start)
  with pytest.raises(CheckpointError) as info:
    run(tiny_config(**KILL_RUN), workdir)
  message = str(info.value)
  assert f"step {NEWEST}" in message and f"step {PREVIOUS}" in message, message
  assert "params" in message  # names what is damaged
  # Nothing was moved or deleted: the user decides.
  assert committed_steps(os.path.join(workdir, checkpoint.LATEST_DIR)) == saved


def test_restore_for_evaluation_refuses_a_damaged_checkpoint(copy_of_reference, caplog):
  workdir = copy_of_reference("evaluation")
  _, best_meta = checkpoint.restore_variables(workdir, which="best")
  best_step = best_meta["step"]
  assert best_step % KILL_RUN["eval.every_steps"] == 0  # a validated step
  _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(best_step)), "params"))
  with pytest.raises(CheckpointError, match=rf"{best_step}.*params"):
    checkpoint.restore_variables(workdir, which="best")
  _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST)), "params"))
  with pytest.raises(CheckpointError, match=rf"step {NEWEST}"):
    checkpoint.restore_variables(workdir, step=NEWEST)
  with caplog.at_level(logging.WARNING):
    _, meta = checkpoint.restore_variables(workdir)  # the newest intact one, with a warning
  assert meta["step"] == PREVIOUS
  assert any(f"step {NEWEST}" in r.getMessage() for r in caplog.records)


def test_leftover_of_a_killed_save_is_ignored_and_cleaned_up(copy_of_reference):
  """A save killed before orbax's rename leaves `<step>.orbax-checkpoint-tmp-*`."""
  workdir = copy_of_reference("killed_save")
  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  leftover = os.path.join(directory, f"{NEWEST + 3}.orbax-checkpoint-tmp-1234567")
  shutil.copytree(os.path.join(directory, str(NEWEST)), leftover)
  _truncate(_largest_file(leftover, "params"))
  store = checkpoint.CheckpointStore(workdir)
  try:
    assert store.newest_restorable_step() == NEWEST
    deadline = time.monotonic() + 60  # orbax removes leftovers in a background thread
    while os.path.exists(leftover) and time.monotonic() < deadline:
      time.sleep(0.1)
  finally:
    store.close()
  assert not os.path.exists(leftover)


def _as_written_before_manifests(step_dir: str) -> None:
  """What an older cnnjax wrote: no manifests at all, and metadata that does not mention one."""
  for path in glob.glob(os.path.join(step_dir, "**", integrity.MANIFEST_FILE), recursive=True):
    os.remove(path)
  for path in glob.glob(os.path.join(step_dir, "meta", "*")):
    if os.path.basename(path) in integrity.UNCOVERED_FILES:
      continue
    with open(path) as f:
      meta = json.load(f)
    meta.pop(integrity.DECLARATION_KEY)
    with open(path, "w") as f:
      json.dump(meta, f)


def test_an_emptied_checkpoint_with_metrics_is_moved_aside_and_the_run_resumes(
    copy_of_reference, tiny_config, caplog):
  """Every file of the step kept as the best emptied (orbax parses its metrics file while
  its manager is built: JSONDecodeError) unless the step is moved aside first."""
  workdir = copy_of_reference("emptied")
  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  with_metrics = [s for s in committed_steps(directory)
                  if os.path.isdir(os.path.join(directory, str(s), integrity.METRICS_ITEM))]
  assert with_metrics, "the reference run kept no checkpoint with metrics"
  emptied = with_metrics[-1]
  _empty_every_file(os.path.join(directory, str(emptied)))
  with caplog.at_level(logging.WARNING):
    summary = run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  assert summary["step"] == (PREVIOUS if emptied == NEWEST else NEWEST)
  assert any(f"step {emptied}" in r.getMessage() and "corrupt_checkpoints" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert emptied not in committed_steps(directory)


def test_damaged_checkpoint_without_its_manifest_is_not_restored(copy_of_reference, tiny_config):
  """A flipped data byte goes unnoticed by TensorStore: a checkpoint that lost its manifest
  (but says it was written with one) must not be restored as if it were sound."""
  workdir = copy_of_reference("no_manifest")
  newest_dir = os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST))
  _flip_without_manifest(newest_dir)
  problem = checkpoint.checkpoint_problem(newest_dir)
  assert problem and "missing" in problem, problem
  if os.path.exists(os.path.join(newest_dir, "params", integrity.MANIFEST_FILE)):
    assert "params/" in problem, problem  # the item manifest names the flipped file
  with pytest.raises(CheckpointError, match=rf"{NEWEST}.*damaged.*manifest"):
    checkpoint.restore_variables(workdir, step=NEWEST)
  summary = run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  assert summary["step"] == PREVIOUS


@pytest.mark.parametrize("item", ["params", "batch_stats", "opt_state", "progress"])
def test_a_flipped_byte_in_any_data_file_is_found(reference_run, tmp_path, item):
  """Every data file of every array item, with the step manifest and, where orbax wrote
  item manifests, without it: the file is named before anything reads it."""
  step_dir = os.path.join(reference_run[0], checkpoint.LATEST_DIR, str(NEWEST))
  files = _item_data_files(step_dir, item)
  assert files, item
  for index, original in enumerate(files):
    copy = str(tmp_path / f"{item}_{index}")
    shutil.copytree(step_dir, copy)
    target = os.path.join(copy, os.path.relpath(original, step_dir))
    _flip_byte(target)
    relative = os.path.relpath(target, copy)
    assert relative in (checkpoint.checkpoint_problem(copy) or ""), relative
    os.remove(os.path.join(copy, integrity.MANIFEST_FILE))
    problem = checkpoint.checkpoint_problem(copy)
    assert problem and "manifest" in problem, problem
    item_manifest = os.path.join(copy, item, integrity.MANIFEST_FILE)
    if os.path.exists(item_manifest):
      with open(item_manifest) as f:
        covered = json.load(f)["files"]
      if os.path.relpath(target, os.path.join(copy, item)) in covered:
        assert relative in problem, problem


def test_checkpoint_written_before_manifests_is_read_with_a_warning(copy_of_reference,
                                                                    tiny_config, caplog):
  workdir = copy_of_reference("legacy")
  newest_dir = os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST))
  _as_written_before_manifests(newest_dir)
  with caplog.at_level(logging.WARNING):
    summary = run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  assert summary["step"] == NEWEST
  assert any(newest_dir in r.getMessage() and "no manifest" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_damaged_checkpoint_written_before_manifests_is_a_checkpoint_error(copy_of_reference,
                                                                          tiny_config):
  """Without any manifest the damage shows only while reading: the run must still say
  which checkpoint, not crash in TensorStore."""
  workdir = copy_of_reference("legacy_damaged")
  newest_dir = os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST))
  _as_written_before_manifests(newest_dir)
  _truncate(_largest_file(newest_dir, "params"))
  with pytest.raises(CheckpointError, match=rf"{NEWEST}.*(move|older)"):
    run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  with pytest.raises(CheckpointError, match=rf"{NEWEST}"):
    checkpoint.restore_variables(workdir, step=NEWEST)


def test_other_processes_take_the_first_process_decision(copy_of_reference, monkeypatch):
  """On a shared filesystem process 0 verifies and moves; another process must neither move
  nor list the directory itself (it could list after the move and disagree), only adopt
  the step process 0 announces."""
  workdir = copy_of_reference("second_process")
  _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST)), "params"))
  announced = []
  real_manager = checkpoint._manager  # pylint: disable=protected-access

  def broadcast_from_process_0(value):
    announced.append(int(value))
    return PREVIOUS  # what process 0 found
  with monkeypatch.context() as patched:  # (orbax itself must not see two processes)
    patched.setattr(checkpoint.jax, "process_index", lambda: 1)
    patched.setattr(checkpoint, "checkpoint_problem", lambda *a, **k: pytest.fail(
        "a process other than 0 verified checkpoints itself"))
    patched.setattr(checkpoint, "_agree_with_first_process", broadcast_from_process_0)
    patched.setattr(checkpoint, "_manager", lambda *a, **k: pytest.fail(
        "orbax's manager was built before process 0's decision arrived")
        if not announced else real_manager(*a, **k))
    store = checkpoint.CheckpointStore(workdir)
  try:
    assert store.newest_restorable_step() == PREVIOUS
  finally:
    store.close()
  assert len(announced) == 1  # one collective, whatever this process saw
  assert NEWEST in committed_steps(os.path.join(workdir, checkpoint.LATEST_DIR))


def test_every_process_enters_the_same_collective_whether_or_not_it_sees_damage(
    copy_of_reference, monkeypatch):
  """Process 0 with damage and process 0 without both call the broadcast exactly once."""
  calls = []
  monkeypatch.setattr(checkpoint, "_agree_with_first_process",
                      lambda value: calls.append(int(value)) or int(value))
  for damaged in (False, True):
    workdir = copy_of_reference(f"process_0_damage_{damaged}")
    if damaged:
      _truncate(_largest_file(os.path.join(workdir, checkpoint.LATEST_DIR, str(NEWEST)), "params"))
    store = checkpoint.CheckpointStore(workdir)
    try:
      store.newest_restorable_step()
    finally:
      store.close()
  assert calls == [NEWEST, PREVIOUS]


def test_torn_config_json_does_not_block_the_resume(copy_of_reference, tiny_config, caplog):
  """config.json is rewritten at every start; a torn copy (power loss) must not strand
  intact checkpoints: the checkpoints' own structure check still guards the restore."""
  workdir = copy_of_reference("torn_config")
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  _truncate(path)
  with caplog.at_level(logging.WARNING):
    summary = run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  assert summary["step"] == NEWEST
  assert any("config.json" in r.getMessage() for r in caplog.records)
  with open(path) as f:
    assert json.load(f)["model"]["name"] == "cifar_resnet20"  # rewritten whole


def test_config_json_is_replaced_whole(reference_run, tiny_config, tmp_path, monkeypatch):
  """A run killed while writing config.json leaves the previous file, never half of one:
  the new text is written elsewhere and renamed over it; killed just before that rename,
  the old file is untouched."""
  workdir = str(tmp_path / "config_write")
  shutil.copytree(reference_run[0], workdir)
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  with open(path) as f:
    before = f.read()
  real_replace = os.replace
  renamed = []

  def killed_before_the_rename(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == checkpoint.CONFIG_FILE:
      with open(src) as f:
        renamed.append(f.read())
      raise SystemExit("killed while writing")
    return real_replace(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, "replace", killed_before_the_rename)
  with pytest.raises(SystemExit):
    run(tiny_config(**KILL_RUN), workdir, stop_after_steps=0)
  monkeypatch.setattr(os, "replace", real_replace)
  assert renamed and json.loads(renamed[0])["model"]["name"] == "cifar_resnet20"  # written in full
  with open(path) as f:
    assert f.read() == before
  assert not [n for n in os.listdir(workdir) if n.endswith(".partial")]
