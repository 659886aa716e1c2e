r"""`python -m cnnjax.evaluate`: workdirs or published weights (several: an ensemble) under a view.

    python -m cnnjax.evaluate --workdir workdirs/quickstart --views 10crop
    python -m cnnjax.evaluate --workdir workdirs/vgg_d --workdir workdirs/vgg_e \
        --views dense_multiscale --output vgg_de.json
    python -m cnnjax.evaluate --weights keras/vgg16:vgg16.h5 --weights keras/vgg19:vgg19.h5 \
        --dataset imagenet2012 --views dense+150crop

Published weights (`--weights SOURCE[:FILE]`, see cnnjax.weights) are read
with their own pixel convention and the training scales their authors used
(VGG D/E: jitter 256..512, so dense Q = 256, 384, 512); --dataset names the data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax

from cnnjax.errors import CnnjaxError, ConfigError
from cnnjax.evaluate.ensemble import VIEWS, Member, evaluate, load_member
from cnnjax.evaluate.report import format_table


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m cnnjax.evaluate", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", action="append", default=[],
                      help="a trained workdir; repeat for an ensemble")
  parser.add_argument("--weights", action="append", default=[],
                      help="published weights SOURCE[:FILE] (e.g. keras/vgg16:vgg16.h5, "
                           "torchvision/resnet50.IMAGENET1K_V2) in place of a workdir; repeatable")
  parser.add_argument("--dataset", default=None,
                      help="the data to score (default: the first workdir's training dataset; "
                           "needed with --weights alone)")
  parser.add_argument("--views", "--view", dest="view", default="center", choices=VIEWS)
  parser.add_argument("--split", default=None, help="default: the training config's eval split")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="examples per global batch (default: ~64 images per device)")
  parser.add_argument("--data_dir", default=None, help="default: the training config's")
  parser.add_argument("--scales", default=None,
                      help="dense_multiscale scales Q, comma-separated (default: the paper's)")
  parser.add_argument("--which", default="latest", choices=("latest", "best"),
                      help="which checkpoint of each workdir")
  parser.add_argument("--ema", default="auto", choices=("auto", "yes", "no"),
                      help="evaluate the EMA parameters (auto: when the run kept them)")
  parser.add_argument("--output", default=None, help="write the JSON report here")
  parser.add_argument("--no_progress", action="store_true")
  parser.add_argument("--verbose", action="store_true",
                      help="show the libraries' own log lines (by default only their errors)")
  return parser.parse_args(argv)


def weights_member(source: str, dataset: str) -> Member:
  """Published weights "SOURCE[:FILE]" as an ensemble member scored on `dataset`."""
  from cnnjax import weights  # pylint: disable=import-outside-toplevel
  name, _, path = source.partition(":")
  loaded = weights.load(name, path=path or None)
  return Member(model=loaded.model, variables=loaded.variables, name=name,
                config=loaded.source.eval_config(dataset))


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  try:
    scales = None
    if args.scales:
      try:
        scales = tuple(int(q) for q in args.scales.split(","))
      except ValueError as error:
        raise ConfigError(f"--scales={args.scales!r}: expected integers like 256,384,512") from error
    use_ema = {"auto": None, "yes": True, "no": False}[args.ema]
    if not args.workdir and not args.weights:
      raise ConfigError("name what to evaluate: --workdir DIR or --weights SOURCE[:FILE] "
                        "(each repeatable for an ensemble)")
    members = [load_member(workdir, which=args.which, use_ema=use_ema)
               for workdir in args.workdir]
    dataset = args.dataset or (members[0].config["dataset"] if members else None)
    if dataset is None:
      raise ConfigError("--weights needs --dataset (a tfds name or image_folder:<path>)")
    members += [weights_member(source, dataset) for source in args.weights]
    report = evaluate(members, dataset, view=args.view,
                      batch_size=args.batch_size, split=args.split, data_dir=args.data_dir,
                      scales=scales, progress=not args.no_progress)
  except CnnjaxError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  report["workdirs"] = list(args.workdir)
  if args.weights:
    report["weights"] = list(args.weights)
  report["which"] = args.which
  print(format_table(report))
  if args.output and jax.process_index() == 0:
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    with open(args.output, "w") as f:
      json.dump(report, f, indent=2)
    print(f"report written to {args.output}")
  return 0


if __name__ == "__main__":
  from cnnjax import logs  # pylint: disable=g-import-not-at-top
  logs.set_up(verbose="--verbose" in sys.argv[1:])  # a process setting: here, not at import
  sys.exit(main())
