"""Log settings of a cnnjax process: the libraries' chatter off, errors and cnnjax's own lines on.

A process setting, made by the command-line entry points (train.py,
`python -m cnnjax.evaluate`, `python -m cnnjax.embed`) and never at import
(DESIGN.md, decision 12). `set_up(verbose=False)` must run before TensorFlow
and jaxlib are loaded, because their C++ logging reads the environment once,
when their shared libraries load; train.py calls it first thing in `main()`,
and TensorFlow is imported later, when the data is opened.

What a first `python train.py` printed, and the setting that silences it:

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
("cnnjax.*", and train.py's) keep the level absl's --verbosity gives the
root logger (WARNING by default); errors and tracebacks always print.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

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
  if verbose:
    return
  environ = os.environ if environ is None else environ
  for name, value in QUIET_ENVIRONMENT.items():
    environ.setdefault(name, value)
  for name in THIRD_PARTY_LOGGERS:
    logging.getLogger(name).setLevel(logging.ERROR)
