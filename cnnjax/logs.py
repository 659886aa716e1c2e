"""Keeping TensorFlow, tfds, absl and orbax quiet: around cnnjax's own calls, or for a whole process.

In a notebook or another program (nothing to call): cnnjax's calls into
those libraries run inside `quiet_libraries()`, which raises their Python
loggers to ERROR for the duration of the call only (a logger whose level
the user has set keeps it), turns tfds' progress bars off and keeps tfds'
"Downloading and preparing" lines (printed, not logged) off stdout while a
dataset is prepared; the
first import of TensorFlow through cnnjax keeps the notices its shared
libraries print while loading off stderr and, unless the user has set it,
sets TF_CPP_MIN_LOG_LEVEL=2 for TensorFlow's C++ runtime (`cnnjax._imports`;
when TensorFlow was imported first, its settings are the user's). No logger
level or other setting changes at import. `show_library_logs()` (or `set_up(verbose=True)`)
lets every library log as it does by default, inside cnnjax's calls too.

For a command-line process, `set_up` makes the same choice process-wide.
It is called by the entry points (`cnnjax-train`, `cnnjax-evaluate`,
`cnnjax-embed`), never at import. `set_up(verbose=False)` must run before TensorFlow
and jaxlib are loaded, because their C++ logging reads the environment once,
when their shared libraries load; `cnnjax-train` calls it right after parsing
its flags, and TensorFlow is imported later, when the data is opened.

What a first training run printed, and the setting that silences it:

* TensorFlow's oneDNN notice ("port.cc ... oneDNN custom operations are on"),
  twice, each preceded by absl's "All log messages before
  absl::InitializeLog() is called are written to STDERR". It is logged at
  library load, before TensorFlow reads TF_CPP_MIN_LOG_LEVEL (no level, 0-3,
  nor GLOG_minloglevel or ABSL_MIN_LOG_LEVEL, hides it in TF 2.21); only
  TF_ENABLE_ONEDNN_OPTS=0 does, by turning oneDNN's rewrites off. They
  rewrite convolutions and matrix products, which the input pipeline does
  not run: its batches are bit-identical either way (RESULTS.md, "Start-up").
* C++ warnings of tf.data and XLA, e.g. "cache_dataset_ops.cc ... did not
  fully read the dataset being cached": TF_CPP_MIN_LOG_LEVEL=2 (errors stay).
* AutoGraph's "could not transform" and "appears to be decorated by wrapt"
  (the "tensorflow" Python logger), tfds' "Variant folder ... has no
  dataset_info.json" and orbax's notices on save and restore (absl's
  logger): those loggers at ERROR.

Environment variables the user has set are kept. cnnjax's own loggers
("cnnjax.*") keep the root logger's level (WARNING by default); errors and
tracebacks always print.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator, MutableMapping

# Environment read by TensorFlow's and jaxlib's C++ logging when their libraries load.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # C++ INFO and WARNING off, ERROR on
    "TF_ENABLE_ONEDNN_OPTS": "0",  # the only switch that removes the oneDNN notice
}

# Python loggers of the libraries a run uses; absl's carries tfds and orbax.
THIRD_PARTY_LOGGERS = ("absl", "tensorflow", "tensorflow_datasets", "jax", "jaxlib", "orbax",
                       "flax", "optax", "etils", "tensorboardX", "PIL")


def set_up(verbose: bool = False, environ: MutableMapping[str, str] | None = None) -> None:
  """Quiets the libraries' logs below ERROR (unless `verbose`); call before TensorFlow loads.

  With `verbose`, nothing is changed: the libraries log as they do by
  default (their warnings and TensorFlow's C++ notices included).
  """
  global _show
  if verbose:
    _show = True
    return
  environ = os.environ if environ is None else environ
  for name, value in QUIET_ENVIRONMENT.items():
    environ.setdefault(name, value)
  for name in THIRD_PARTY_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)


# Python loggers that cnnjax's calls raise to ERROR while they run (absl's carries tfds and orbax).
QUIETED_DURING_CALLS = ("absl", "tensorflow", "tensorflow_datasets", "orbax", "etils")

_show = False


def show_library_logs(show: bool = True) -> None:
  """Lets the libraries log inside cnnjax's calls as they do by default (`show=False` undoes it)."""
  global _show
  _show = show


def library_logs_shown() -> bool:
  return _show


@contextlib.contextmanager
def quiet_libraries(drop_prints: bool = False) -> Iterator[None]:
  """Within: the libraries' loggers at ERROR and tfds' bars off; then as they were.

  Also a decorator. Loggers the user has given a level keep it; nested uses
  leave the outer one's settings in place. `drop_prints`: stdout is dropped
  too, for a call that prints nothing of cnnjax's own but during which tfds
  prints ("Downloading and preparing dataset ..." for a local folder).
  """
  if _show:
    yield
    return
  raised = []
  for name in QUIETED_DURING_CALLS:
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
      logger.setLevel(logging.ERROR)
      raised.append(logger)
  tqdm_utils = None
  if sys.modules.get("tensorflow_datasets") is not None:  # loaded (None: marked absent)
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  bars_were_on = getattr(tqdm_utils, "_active", False)
  if bars_were_on:
    tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()) if drop_prints else contextlib.nullcontext():
      yield
  finally:
    if bars_were_on:
      tqdm_utils.display_progress_bar(True)
    for logger in raised:
      logger.setLevel(logging.NOTSET)


@contextlib.contextmanager
def native_notices_silenced() -> Iterator[None]:
  """Within: file descriptor 2 goes to /dev/null, for a native library's notices while it loads.

  Python-level errors are exceptions and still surface; only what native
  code writes to stderr meanwhile is lost, so keep it around imports.
  TensorFlow's C++ runtime reads TF_CPP_MIN_LOG_LEVEL once, at its first
  log line: unless the user has set it, it is set to "2" (errors only) here,
  which only happens when cnnjax is the first to import TensorFlow.
  """
  if _show:
    yield
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_ENVIRONMENT["TF_CPP_MIN_LOG_LEVEL"])
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real descriptor 2 (some embedded interpreters)
    yield
    return
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def progress_bars_shown(stream=None) -> bool:
  """Whether a progress bar belongs on `stream` (default stderr): a terminal or a notebook.

  A log file or a pipe gets the lines without the bars' carriage returns.
  """
  stream = sys.stderr if stream is None else stream
  try:
    if stream.isatty():
      return True
  except (AttributeError, ValueError):
    pass
  return "ipykernel" in sys.modules  # Jupyter draws the bars in the cell's output
