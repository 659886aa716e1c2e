"""A first `python train.py` prints cnnjax's lines, not the libraries' log chatter.

train.py runs as a user starts it (a subprocess, without the suite's
TF_CPP_MIN_LOG_LEVEL) on a tiny config and a fresh data_dir, so the digits
dataset is prepared too. Without --verbose none of the libraries' notices
may appear; with it some must (so the markers below are the real lines),
and cnnjax's errors and a bug's traceback print either way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from cnnjax import logs

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPOSITORY_ROOT, "train.py")

# What a first run printed before (one marker per kind of line).
THIRD_PARTY_MARKERS = (
    "oneDNN custom operations",  # TensorFlow's C++ notice at load (port.cc), twice
    "absl::InitializeLog()",  # absl's C++ notice preceding it
    "AutoGraph could not transform",  # AutoGraph on tfds' reader
    "decorated by wrapt",
    "has no dataset_info.json",  # tfds, preparing a dataset
    "cache_dataset_ops",  # tf.data, a cache read partly (eval)
)
TINY = ("--config.num_steps=2",
        "--config.model_kwargs={'stage_sizes': (1, 1, 1), 'width_multiplier': 0.25}",
        "--config.image_size=16", "--config.batch_size=16", "--config.eval_num_batches=1",
        "--config.progress_bar=False", "--config.compilation_cache_dir=none")


def _user_environment() -> dict[str, str]:
  """This environment less the log settings the suite makes (tests/conftest.py)."""
  environ = dict(os.environ)
  for name in logs.QUIET_ENVIRONMENT:
    environ.pop(name, None)
  environ["JAX_PLATFORMS"] = "cpu"
  return environ


def _train(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, TRAIN, *args], env=_user_environment(),
                        capture_output=True, text=True, timeout=timeout, cwd=REPOSITORY_ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_first_run_prints_no_library_notices_unless_verbose(tmp_path, verbose):
  flags = ["--verbose"] if verbose else []
  result = _train(*flags, f"--workdir={tmp_path / 'work'}", f"--config.data_dir={tmp_path / 'data'}",
                  *TINY)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output
  assert "cnnjax: " in output and "final held-out accuracy" in output, output
  shown = [marker for marker in THIRD_PARTY_MARKERS if marker in output]
  if verbose:
    assert len(shown) >= 3, output  # the same run, the libraries' lines back
  else:
    assert not shown, output


def test_cnnjax_error_still_prints(tmp_path):
  result = _train(f"--workdir={tmp_path}", "--config.num_steps=-3", timeout=120)
  assert result.returncode != 0
  assert "ConfigError: " in result.stderr and "num_steps" in result.stderr, result.stderr


def test_traceback_of_a_bug_still_prints(tmp_path):
  config_file = tmp_path / "broken.py"
  config_file.write_text(textwrap.dedent("""
      def get_config():
        return 1 / 0  # a bug in a recipe
      """))
  result = _train(f"--config={config_file}", f"--workdir={tmp_path / 'work'}", timeout=120)
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr, result.stderr


def test_set_up_keeps_errors_and_cnnjax_warnings():
  names = logs.THIRD_PARTY_LOGGERS + ("cnnjax",)
  levels = {name: logging.getLogger(name).level for name in names}
  root_level = logging.getLogger().level
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}  # a user's own setting wins
  try:
    logging.getLogger().setLevel(logging.WARNING)
    logs.set_up(environ=environ)
    for name in ("absl", "tensorflow", "orbax.checkpoint", "jax._src.xla_bridge"):
      assert not logging.getLogger(name).isEnabledFor(logging.WARNING), name
      assert logging.getLogger(name).isEnabledFor(logging.ERROR), name
    assert logging.getLogger("cnnjax.train.checkpoint").isEnabledFor(logging.WARNING)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
  finally:
    logging.getLogger().setLevel(root_level)
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)


def test_verbose_set_up_changes_nothing():
  environ: dict[str, str] = {}
  level = logging.getLogger("absl").level
  logs.set_up(verbose=True, environ=environ)
  assert environ == {} and logging.getLogger("absl").level == level


def test_training_path_imports_neither_tensorflow_nor_torch(tmp_path):
  """TensorFlow loads when the data is opened (cnnjax.train.inputs), torch never."""
  script = textwrap.dedent(f"""
      import sys
      from cnnjax.train import loop
      from cnnjax.train.writer import MetricWriter
      MetricWriter({str(tmp_path)!r}, tensorboard=True)
      print(sorted(name for name in ("tensorflow", "tensorflow_datasets", "torch")
                   if name in sys.modules))
      """)
  result = subprocess.run([sys.executable, "-c", script], env=_user_environment(),
                          capture_output=True, text=True, timeout=120, cwd=REPOSITORY_ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
  assert any((tmp_path / "tensorboard").iterdir())  # the writer did start
