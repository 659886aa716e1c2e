"""Every command line: declared in pyproject, importable, absl flags, a mistake as one line."""

from __future__ import annotations

import importlib
import importlib.util
import os
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scripts() -> dict[str, str]:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def test_the_commands_are_declared():
  assert {"cnnjax-train", "cnnjax-evaluate", "cnnjax-embed", "cnnjax-models",
          "cnnjax-classify"} <= set(_scripts())


@pytest.mark.parametrize("script", sorted(_scripts()))
def test_each_declared_entry_point_imports_and_is_callable(script):
  module_name, _, attribute = _scripts()[script].partition(":")
  if importlib.util.find_spec(module_name) is None and module_name == "cnnjax.classify":
    pytest.skip("cnnjax.classify is not part of this checkout")
  assert callable(getattr(importlib.import_module(module_name), attribute))


COMMANDS = {
    "cnnjax-evaluate": "cnnjax.evaluate.__main__",
    "cnnjax-embed": "cnnjax.embed",
    "cnnjax-models": "cnnjax.models.__main__",
}


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_help_lists_the_flags(script, capsys):
  main = importlib.import_module(COMMANDS[script]).main
  with pytest.raises(SystemExit) as exit_info:
    main(["--help"] if script != "cnnjax-models" else ["cnnjax-models", "--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: {script}"), out
  assert ("--[no]verbose" in out) != (script == "cnnjax-models") and "flagfile" not in out, out


@pytest.mark.parametrize("script", sorted(COMMANDS))
def test_an_unknown_flag_is_one_line_and_status_2(script, capsys):
  main = importlib.import_module(COMMANDS[script]).main
  argv = ["--no_such_flag=1"] if script != "cnnjax-models" else ["cnnjax-models", "--no_such_flag"]
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "Flags parsing error" in err and "no_such_flag" in err and "Traceback" not in err, err


def test_models_takes_shell_patterns_and_names_a_pattern_that_matches_nothing(capsys):
  from cnnjax.models.__main__ import main
  assert main(["cnnjax-models", "resnet1*", "cifar_resnet20"]) == 0
  out = capsys.readouterr().out
  rows = [line.split("`")[1] for line in out.splitlines() if line.startswith("| `")]
  assert rows == ["resnet18", "resnet101", "resnet152", "cifar_resnet20"]
  assert main(["cnnjax-models", "resnett*"]) == 2
  assert "ModelError: no model matches 'resnett*'" in capsys.readouterr().err


def test_googlenet_row_states_both_counts(capsys):
  from cnnjax.models.__main__ import main
  assert main(["cnnjax-models", "googlenet"]) == 0
  out = capsys.readouterr().out
  assert "| 6,998,552 [1] |" in out and "aux_logits=False" in out and "13,378,280" in out, out


def test_allowed_overrides_takes_a_registered_name():
  import cnnjax.models as models
  by_name = models.allowed_overrides("resnet18")
  assert by_name == models.allowed_overrides(models.get_spec("resnet18").module)
  assert "bn_momentum" in by_name and "num_classes" not in by_name
  with pytest.raises(models.ModelError, match="resnet18"):
    models.allowed_overrides("resnet_18")


def test_a_command_without_its_extra_names_it_in_one_line(tmp_path, monkeypatch, capsys):
  """What `cnnjax-train` does on `pip install cnnjax` alone: the extra, not a traceback."""
  from cnnjax import _cli
  (tmp_path / "needs_an_extra.py").write_text(
      "from cnnjax import _imports\n"
      "_imports.require('train', 'this command', ('no_such_module_for_this_test',))\n"
      "def main():\n  return 0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert _cli._launch("needs_an_extra:main") == 2
  err = capsys.readouterr().err
  assert err.startswith("MissingExtraError: this command needs the [train] extra"), err
  assert 'pip install "cnnjax[train]"' in err and "no_such_module_for_this_test" in err


def test_console_scripts_run_the_commands():
  from cnnjax import _cli
  for script, target in _scripts().items():
    module_name, _, function = target.partition(":")
    if module_name == "cnnjax._cli":
      assert callable(getattr(_cli, function)), script
