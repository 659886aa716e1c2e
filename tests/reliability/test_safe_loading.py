"""Promise 8: loading never executes code from the data it loads.

Checkpoints hold no pickle and restore without the pickle module; PyTorch
weights are read with `torch.load(weights_only=True)`, so a booby-trapped
.pth is refused without running its payload; `--config.<key>=<value>` is
parsed as a literal (or a plain string), never evaluated. Config *files*
are Python and are trusted like code: the README says so.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import pickletools
import re

import numpy as np
import pytest
from reliability_helpers import REPO, leaves, run_flags

from cnnjax.errors import CheckpointError, ConfigError
from cnnjax.train import checkpoint
from cnnjax.train import config as config_lib


def _looks_like_pickle(data: bytes) -> bool:
  """Whether `data` parses as one whole pickle (opcodes only: nothing is executed)."""
  if len(data) < 3 or data[0] != 0x80 or data[1] not in (2, 3, 4, 5):
    return False
  try:
    ops = list(pickletools.genops(io.BytesIO(data)))
  except Exception:  # pylint: disable=broad-except
    return False
  return bool(ops) and ops[-1][0].name == "STOP"


def test_checkpoints_hold_no_pickle(reference_run):
  workdir, _ = reference_run
  checked = 0
  for root, _, files in os.walk(workdir):
    for name in files:
      assert not name.endswith((".pkl", ".pickle", ".pt", ".pth", ".npy", ".npz")), name
      with open(os.path.join(root, name), "rb") as f:
        assert not _looks_like_pickle(f.read()), os.path.join(root, name)
      checked += 1
  assert checked > 20


def test_pickle_detector_detects_pickles():
  assert _looks_like_pickle(pickle.dumps({"a": np.arange(3).tolist()}, protocol=4))
  assert not _looks_like_pickle(json.dumps({"a": 1}).encode())


@pytest.fixture()
def pickle_forbidden(monkeypatch):
  def forbidden(*args, **kwargs):
    raise AssertionError("checkpoint restore used pickle")
  for module in (pickle, __import__("_pickle")):
    for name in ("load", "loads", "Unpickler"):
      monkeypatch.setattr(module, name, forbidden)


def test_restore_works_without_the_pickle_module(reference_run, pickle_forbidden):
  workdir, _ = reference_run
  variables, meta = checkpoint.restore_variables(workdir)
  assert meta["step"] > 0 and leaves(variables)
  _, model, best = checkpoint.restore_for_eval(workdir, which="best")
  assert leaves(best)


def test_torch_weights_are_loaded_weights_only(tmp_path):
  torch = pytest.importorskip("torch")
  from cnnjax.interop.state_dict import read_state_dict
  marker = tmp_path / "payload_ran"

  class Payload:
    def __reduce__(self):
      return (pathlib.Path.touch, (marker,))

  trapped = str(tmp_path / "trapped.pth")
  torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "extra": Payload()}, trapped)
  with pytest.raises(CheckpointError, match="weights-only"):
    read_state_dict(trapped)
  assert not marker.exists(), "loading a .pth ran code from it"

  plain = str(tmp_path / "plain.pth")
  torch.save({"conv1.weight": torch.ones(2, 3, 3, 3)}, plain)
  assert read_state_dict(plain)["conv1.weight"].sum() == 54


@pytest.mark.parametrize("template", [
    "--config.model.name=__import__('pathlib').Path({marker!r}).touch()",
    "--config.input.dataset=image_folder:{marker}';__import__('pathlib').Path({marker!r}).touch();'",
    "--config.model.kwargs={{'width_multiplier': __import__('pathlib').Path({marker!r}).touch()}}",
    "--config.schedule.multistep.boundaries_steps=(__import__('pathlib').Path({marker!r}).touch(),)",
    "--config.run.batch_size=__import__('pathlib').Path({marker!r}).touch()",
    "--config.optimizer.learning_rate=exec('import pathlib; pathlib.Path({marker!r}).touch()')",
])
def test_command_line_overrides_are_never_evaluated(template, tmp_path):
  marker = str(tmp_path / "evaluated")
  flag = template.format(marker=marker)
  result = run_flags(flag)
  assert not os.path.exists(marker), f"{flag} was evaluated"
  match = re.search(r"^PARSED (.*)$", result.stdout, re.M)
  if match is None:  # refused by absl or as a ConfigError, naming the flag, no traceback
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    key = flag[len("--config."):].partition("=")[0]
    assert re.search(rf"^(ConfigError: |FATAL Flags parsing error: flag --config\.{key}=)",
                     result.stderr, re.M), result.stderr
    return
  parsed = json.loads(match.group(1))
  key, _, raw = flag[len("--config."):].partition("=")
  value = parsed
  for name in key.split("."):
    value = value[name]
  # Kept as the text it was given: the whole string, or strings inside a tuple.
  assert value == raw or (isinstance(value, list) and all(isinstance(v, str) for v in value)
                          and "".join(value) in raw), (key, value)
  if key != "input.dataset":  # not a model name, not a number: validation refuses it
    with pytest.raises(ConfigError, match=f"config.{key}"):
      config_lib.validate(parsed, model_names=["cifar_resnet20"])


def test_the_docs_say_config_files_are_code():
  docs = os.path.join(REPO, "docs")
  pages = {name: open(os.path.join(docs, name), encoding="utf-8").read()
           for name in sorted(os.listdir(docs)) if name.endswith(".md")}
  saying = [name for name, text in pages.items()
            if re.search(r"(config|recipe) files are Python", text, re.I)]
  assert saying, "a docs page must say that config files are Python code"
  assert "literal" in pages[saying[0]]
