"""This process's place in a multi-process input stream (shared by every input pipeline).

Needs neither TensorFlow nor an accelerator: JAX is imported only when the
process index or count must come from it.
"""

from __future__ import annotations

from cnnjax.errors import DataError


def resolve_process(process_index: int | None, process_count: int | None,
                    error: type[Exception] = DataError) -> tuple[int, int]:
  """(process_index, process_count), each defaulting to JAX's; `error` when out of range."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise error(f"process_index must be in [0, process_count); got {process_index} of {process_count}")
  return int(process_index), int(process_count)


def local_batch_size(global_batch_size: int, process_count: int,
                     error: type[Exception] = DataError) -> int:
  """This process's share of each global batch; `error` unless it divides evenly."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise error(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                f"process count {process_count}")
  return global_batch_size // process_count
