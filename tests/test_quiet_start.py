"""cnnjax prints its own lines, not the libraries' log chatter: as a command and as a library.

`cnnjax-train` runs as a user starts it (a subprocess, without the suite's
TF_CPP_MIN_LOG_LEVEL, from a directory outside the checkout) on the
quickstart recipe shrunk and a fresh data_dir, so the digits dataset is
prepared too. Without --verbose none of the libraries' notices may appear;
with it some must (so the markers below are the real lines), and cnnjax's
errors and a bug's traceback print either way. A notebook-style script
(import, create, an image-folder iterator, evaluate a checkpoint) in a fresh
process writes no line of TensorFlow, tfds, absl or orbax either, without
any setting of its own.
"""

from __future__ import annotations

import logging
import os
import re
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
TINY = ("--config.run.num_steps=2",
        "--config.model.kwargs={'stage_sizes': (1, 1, 1), 'width_multiplier': 0.25}",
        "--config.input.image_size=16", "--config.run.batch_size=16", "--config.eval.num_batches=1",
        "--config.run.compilation_cache_dir=none")  # the progress bar on: a pipe must not get it


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
  environ = _user_environment()
  environ["PYTHONPATH"] = REPOSITORY_ROOT + os.pathsep + environ.get("PYTHONPATH", "")
  result = subprocess.run(
      [sys.executable, "-m", "cnnjax.train", "--config", "quickstart", *flags,
       f"--config.input.data_dir={tmp_path / 'data'}", *TINY], env=environ, capture_output=True,
      text=True, timeout=240, cwd=tmp_path)  # not the checkout: recipes are found by name
  output = result.stdout + result.stderr
  assert result.returncode == 0, output
  assert "cnnjax: " in output and "final held-out error" in output, output
  shown = [marker for marker in THIRD_PARTY_MARKERS if marker in output]
  if verbose:
    assert len(shown) >= 3, output  # the same run, the libraries' lines back
    return
  assert not shown, output
  # The closing summary: where the run is, its checkpoints, the time, how to look at it.
  workdir = os.path.join("workdirs", "quickstart")
  assert (tmp_path / workdir / "checkpoints").is_dir()
  assert f"workdir: {workdir}" in result.stdout, result.stdout
  assert "checkpoints: last step 2, best step 2" in result.stdout, result.stdout
  assert re.search(r"wall time: \d+ s", result.stdout), result.stdout
  assert f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}" in result.stdout
  assert "compiling the train step" in result.stdout, result.stdout
  assert "\r" not in output  # no progress bar redraws outside a terminal
  _notebook_sees_no_library_lines(tmp_path, str(tmp_path / workdir), str(tmp_path / "data"))


# A line a library wrote: C++ logging (glog/absl format), Python logging's default format
# for their loggers, tfds' preparation lines and progress bars.
LIBRARY_LINE = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages|(INFO|WARNING|ERROR):(absl|tensorflow|orbax)"
    r"|.*(oneDNN|Downloading and preparing|Generating splits|Shuffling|dataset_info.json"
    r"|AutoGraph|Given directory is read only|\x1b\[A))")

NOTEBOOK = """
import jax, jax.numpy as jnp
import cnnjax.data as data
import cnnjax.models as models
from cnnjax import evaluate as ev
from cnnjax.train import restore_for_eval

model = models.create("cifar_resnet20", width_multiplier=0.25)
model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
info = data.dataset_info("image_folder:{folder}", data_dir="{data_dir}")
batches = list(data.eval_iterator("image_folder:{folder}", global_batch_size=4,
                                  data_dir="{data_dir}", image_size=32))
config, model, variables = restore_for_eval("{workdir}")
report = ev.evaluate([ev.load_member("{workdir}")], "digits", data_dir="{digits_dir}",
                     progress=False, split="test[:32]")
print("DONE", info.num_classes, len(batches), config.model.name, report["num_examples"])
"""


def _notebook_sees_no_library_lines(tmp_path, workdir: str, digits_dir: str) -> None:
  """The notebook-style script in a fresh process, on the run's workdir and a new image folder."""
  from data_helpers import smooth_image, write_image  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  folder = tmp_path / "photos"
  for split in ("train", "val"):
    for label in ("cat", "dog"):
      for i in range(3):
        write_image(str(folder / split / label / f"{i}.jpg"), smooth_image(rng, 40, 48))
  script = NOTEBOOK.format(folder=folder, data_dir=tmp_path / "folder_data", workdir=workdir,
                           digits_dir=digits_dir)
  environ = _user_environment()
  environ["PYTHONPATH"] = REPOSITORY_ROOT + os.pathsep + environ.get("PYTHONPATH", "")
  result = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True,
                          text=True, timeout=240, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "DONE 2 " in result.stdout, result.stdout
  library_lines = [line for line in result.stderr.splitlines() if LIBRARY_LINE.match(line)]
  assert not library_lines, result.stderr[-3000:]
  assert "Downloading" not in result.stdout, result.stdout  # a local folder is not downloaded


def test_cnnjax_error_still_prints(tmp_path):
  result = _train(f"--workdir={tmp_path}", "--config.run.num_steps=-3", timeout=120)
  assert result.returncode != 0
  assert "ConfigError: " in result.stderr and "run.num_steps" in result.stderr, result.stderr


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
