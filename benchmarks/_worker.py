"""A benchmark worker process: `python -m benchmarks._worker '<spec json>'`.

One process per configuration keeps peak memory per configuration and lets
each carry its own XLA_FLAGS. The worker sets up (build, compile, warm up),
reports "ready", then answers the parent's commands on stdin, one JSON object
per line: {"op": "time", "steps": n} -> the n step times; {"op": "finish"}
-> peak memory, then exits. Every reply is one protocol line on stdout.
Living workers wait on stdin between commands, so the parent can interleave
the timed steps of several frameworks under the same machine load.
"""

from __future__ import annotations

import json
import sys
import traceback

from benchmarks import _common


def _runner(spec):
  if spec["framework"] == "jax_float64_reference":
    from benchmarks._jax_worker import Float64Reference  # pylint: disable=import-outside-toplevel
    return Float64Reference(spec)
  if spec["framework"] == "jax":
    from benchmarks._jax_worker import JaxRunner  # pylint: disable=import-outside-toplevel
    return JaxRunner(spec)
  if spec["framework"] == "torch":
    from benchmarks._torch_worker import TorchRunner  # pylint: disable=import-outside-toplevel
    return TorchRunner(spec)
  raise ValueError(f"unknown framework {spec['framework']!r}")


def main(argv: list[str]) -> int:
  spec = json.loads(argv[1])
  if spec["framework"].startswith("jax"):
    # What train.py does first: cnnjax/xla_cpu.py's tuned XLA flags and malloc
    # settings (off with --patches=xla_defaults / glibc_malloc). Torch workers
    # keep the defaults their users get.
    from cnnjax import xla_cpu  # pylint: disable=import-outside-toplevel
    xla_cpu.configure_process()
  try:
    runner = _runner(spec)
    info = runner.setup()
    _common.send({"event": "ready", **info})
    for line in sys.stdin:
      command = json.loads(line)
      if command["op"] == "time":
        load_before = _common.load_average()
        seconds = runner.time_steps(int(command["steps"]))
        _common.send({"event": "timed", "step_s": [wall for wall, _ in seconds],
                      "cpu_s": [cpu for _, cpu in seconds], "load_before": load_before,
                      "load_after": _common.load_average()})
      elif command["op"] == "finish":
        _common.send({"event": "finished", **runner.finish(),
                      "tensorflow_imported": "tensorflow" in sys.modules,
                      "ml_collections_imported": "ml_collections" in sys.modules})
        return 0
      else:
        raise ValueError(f"unknown command {command!r}")
    return 0
  except Exception as error:  # pylint: disable=broad-except
    _common.send({"event": "error", "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc()})
    return 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
