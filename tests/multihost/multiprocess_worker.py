"""One process of a 2-process CPU run for tests/multihost: joins, does one thing, prints RESULT.

  python multiprocess_worker.py <coordinator host:port> <process_id> <mode> <workdir>

mode "lock": `workdir_lock.acquire_for_run(workdir)`; RESULT {"refused": message | null}.
mode "resume_step": `CheckpointStore(workdir).newest_restorable_step()`; RESULT {"step": n}.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo")

import jax  # noqa: E402

from cnnjax.errors import CnnjaxError  # noqa: E402


def main(coordinator: str, process_id: int, mode: str, workdir: str) -> None:
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=2,
                             process_id=process_id)
  started = time.monotonic()
  result: dict = {}
  if mode == "lock":
    from cnnjax.train import workdir_lock
    try:
      with workdir_lock.acquire_for_run(workdir):
        result["refused"] = None
    except CnnjaxError as error:
      result["refused"] = f"{type(error).__name__}: {error}"
  elif mode == "resume_step":
    from cnnjax.train import checkpoint
    store = checkpoint.CheckpointStore(workdir)
    try:
      result["step"] = store.newest_restorable_step()
    finally:
      store.close()
  else:
    raise SystemExit(f"unknown mode {mode!r}")
  result["seconds"] = time.monotonic() - started
  print("RESULT " + json.dumps(result), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
