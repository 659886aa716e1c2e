"""Stop requests: SIGTERM / SIGINT finish the current step, save, and return.

A preempted job (SIGTERM from the scheduler) or a Ctrl-C sets a flag that
the loop reads at every step; in a multi-process run the processes agree
on it at log boundaries, so all of them save the same step and stop
together. A second Ctrl-C raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

import jax
import numpy as np


class StopRequest:
  """Set by SIGTERM/SIGINT during a run; the loop saves and returns at the next boundary."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __bool__(self) -> bool:
    return self.signal_name is not None

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C means "now"
    self.signal_name = signal.Signals(signum).name

  @contextlib.contextmanager
  def installed(self):
    if threading.current_thread() is not threading.main_thread():
      yield self  # signals reach only the main thread; nothing to install
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)
    try:
      yield self
    finally:
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)


def agree_to_stop(local_flag: bool, step: int, every: int) -> bool:
  """Whether to stop now: this process's flag, agreed by all processes every `every` steps."""
  if jax.process_count() == 1:
    return local_flag
  if step % every:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  flags = multihost_utils.process_allgather(np.asarray(local_flag, np.int32))
  return bool(np.any(flags))
