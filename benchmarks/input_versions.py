"""Two checkouts of cnnjax, one input pipeline: CPU seconds per image and the tf.data graphs.

Wall-clock throughput on a shared machine moves with everyone else's load;
the CPU time a process spends per image moves much less. This script runs
`cnnjax.data.train_iterator` of two checkouts (e.g. an old commit exported
with `git archive <commit> | tar -x -C /tmp/old`, and this one) in two
long-lived worker processes and hands them the same cases in turn, old and
new alternating case by case and round by round, so that a change of load
hits both. Each turn builds a fresh iterator, pulls 4 batches to warm it up
and times 16 (64 images each): process CPU time (every thread) per image.
A control case runs the same textbook tf.data pipeline in both workers
("plain", the code of this file): its spread of new/old ratios is the
method's noise.

--graphs instead serialises each case's tf.data graph in both checkouts and
compares them node by node (op, attributes, constants; function and node
names and file paths aside): identical graphs do identical work per image.

  python benchmarks/input_versions.py /tmp/old . [--rounds 12] [--graphs]

A checkout from before the boundary setting is driven with its own
arguments (device_preprocessing=True, photometric/resize="device").
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

CASES = (("plain", False, 256), ("inception", True, 256), ("inception", True, 320),
         ("inception", False, 256), ("inception", False, 320), ("inception", False, 0),
         ("alexnet", False, 0))


def _iterator(folder: str, data_dir: str, preset: str, canvas: bool, bound: int):
  """This checkout's train_iterator of a case (or the plain control), uint8 out."""
  from cnnjax.data import pipeline  # pylint: disable=import-outside-toplevel
  if preset == "plain":
    from cnnjax.data.sources import get_source  # pylint: disable=import-outside-toplevel
    return _plain(get_source(f"image_folder:{folder}", data_dir, max_resolution=bound))
  kwargs = dict(data_dir=data_dir, global_batch_size=64, augment=preset, image_size=224,
                normalize="imagenet" if preset == "inception" else "per_channel",
                process_index=0, process_count=1, max_resolution=bound)
  if "boundary" in inspect.signature(pipeline.train_iterator).parameters:
    kwargs["boundary"] = "canvas" if canvas else "uint8"
  else:  # before the boundary setting
    kwargs["device_preprocessing"] = True
    kwargs["augment_kwargs"] = ({"photometric": "device", **({"resize": "device"} if canvas else {})}
                                if preset == "inception" else {})
  return pipeline.train_iterator(f"image_folder:{folder}", **kwargs)


def _plain(source):
  """Decode, Inception crop, resize, flip, uint8: stock tf.data, the same in both workers."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  def crop(index, example):
    rng = tf.stack([tf.constant(0, tf.int64), index])
    image = tf.io.decode_jpeg(example["image"], channels=3)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=rng, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, size), (224, 224))
    image = tf.image.stateless_random_flip_left_right(image, rng)
    return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            "label": tf.cast(example["label"], tf.int32)}

  ds = source.read("train").repeat().enumerate().map(crop, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(64, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ({k: v.numpy() for k, v in batch.items()} for batch in ds)


def worker(folder: str, data_dir: str) -> None:
  """Serves cases read from stdin: one JSON line [preset, canvas, bound, warm, timed] each,
  answered with [CPU seconds, wall seconds, images]."""
  print("ready", flush=True)
  for line in sys.stdin:
    preset, canvas, bound, warm, timed = json.loads(line)
    stream = _iterator(folder, data_dir, preset, canvas, bound)
    for _ in range(warm):
      next(stream)
    cpu, wall, images = time.process_time(), time.perf_counter(), 0
    for _ in range(timed):
      images += len(next(stream)["label"])
    print("\n" + json.dumps([time.process_time() - cpu, time.perf_counter() - wall, images]),
          flush=True)
    del stream


def graph_summary(folder: str, data_dir: str) -> None:
  """Prints {case: sorted node descriptions} of each case's tf.data graph (JSON)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from cnnjax.data import pipeline  # pylint: disable=import-outside-toplevel
  captured = {}
  numpy_batches = pipeline._numpy_batches  # pylint: disable=protected-access
  pipeline._numpy_batches = lambda ds, *a: captured.setdefault("ds", ds) and numpy_batches(ds, *a)

  def describe(node) -> str:
    attrs = [(k, re.sub(r'name: "[^"]*"|_\d+|"/[^"]*"', "", str(node.attr[k]))) for k in sorted(node.attr)]
    return repr((node.op, attrs))

  out = {}
  for case in CASES[1:]:
    captured.clear()
    _iterator(folder, data_dir, *case)
    graph = tf.compat.v1.GraphDef.FromString(captured["ds"]._as_serialized_graph(  # pylint: disable=protected-access
        external_state_policy=tf.data.experimental.ExternalStatePolicy.WARN).numpy())
    nodes = [describe(n) for n in graph.node]
    nodes += [describe(n) for f in graph.library.function for n in f.node_def]
    out[str(case)] = sorted(nodes)
  print(json.dumps(out))


def _run(checkout: str, args: list[str], **kwargs):
  env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout), TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=checkout, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kwargs)


def _answer(process) -> list:
  """A worker's answer: its next JSON line (preparation may print before it)."""
  while True:
    line = process.stdout.readline()
    if not line:
      raise RuntimeError("a worker stopped; run it by hand to see why")
    if line.startswith("["):
      return json.loads(line)


def compare_cpu(checkouts: dict[str, str], folder: str, data_dirs: dict[str, str], rounds: int,
                timed: int) -> None:
  workers = {tag: _run(path, ["--worker", folder, data_dirs[tag]], stdin=subprocess.PIPE)
             for tag, path in checkouts.items()}
  for process in workers.values():
    while process.stdout.readline().strip() != "ready":
      pass
  for process in workers.values():  # prepares the copies outside the timing
    for case in CASES:
      process.stdin.write(json.dumps([*case, 1, 1]) + "\n")
      process.stdin.flush()
      _answer(process)
  per_image = collections.defaultdict(lambda: collections.defaultdict(list))
  for number in range(rounds):
    order = ["old", "new"] if number % 2 == 0 else ["new", "old"]
    for case in CASES:
      for tag in order:
        workers[tag].stdin.write(json.dumps([*case, 4, timed]) + "\n")
        workers[tag].stdin.flush()
        cpu, wall, images = _answer(workers[tag])
        per_image[case][tag].append((1e3 * cpu / images, 1e3 * wall / images))
  for process in workers.values():
    process.stdin.close()
    process.wait()
  print(f"CPU ms per image (all threads), medians of {rounds} alternating rounds; new/old per round")
  for case, runs in per_image.items():
    old, new = ([c for c, _ in runs[t]] for t in ("old", "new"))
    ratios = [b / a for a, b in zip(old, new)]
    print(f"  {str(case):28s} old {statistics.median(old):.3f} new {statistics.median(new):.3f}  "
          f"new/old median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")


def compare_graphs(checkouts: dict[str, str], folder: str, data_dirs: dict[str, str]) -> None:
  graphs = {tag: json.loads(_run(path, ["--graph", folder, data_dirs[tag]]).communicate()[0]
                            .strip().splitlines()[-1])  # after the preparation's messages
            for tag, path in checkouts.items()}
  for case, old in graphs["old"].items():
    old, new = collections.Counter(old), collections.Counter(graphs["new"][case])
    verdict = "identical" if old == new else f"{sum((old - new).values())} nodes only old, " \
                                              f"{sum((new - old).values())} only new"
    print(f"  {case:28s} {sum(old.values())} nodes: {verdict}")


def main() -> None:
  if sys.argv[1:2] in (["--worker"], ["--graph"]):
    (worker if sys.argv[1] == "--worker" else graph_summary)(sys.argv[2], sys.argv[3])
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("old")
  parser.add_argument("new")
  parser.add_argument("--rounds", type=int, default=12)
  parser.add_argument("--batches", type=int, default=16)
  parser.add_argument("--num-images", type=int, default=150)
  parser.add_argument("--graphs", action="store_true")
  args = parser.parse_args()
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from photos import make_photo_folder  # pylint: disable=import-outside-toplevel
  checkouts = {"old": args.old, "new": args.new}
  with tempfile.TemporaryDirectory() as workdir:
    folder = os.path.join(workdir, "photos")
    make_photo_folder(folder, args.num_images, 500, 375)
    data_dirs = {tag: os.path.join(workdir, f"data-{tag}") for tag in checkouts}
    if args.graphs:
      compare_graphs(checkouts, folder, data_dirs)
    else:
      compare_cpu(checkouts, folder, data_dirs, args.rounds, args.batches)


if __name__ == "__main__":
  main()
