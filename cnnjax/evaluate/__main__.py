r"""`cnnjax-evaluate` (`python -m cnnjax.evaluate`): workdirs or published weights (several: an ensemble) under a view.

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

import json
import os
import sys
from collections.abc import Sequence

import jax

from cnnjax import _cli
from cnnjax.errors import CnnjaxError, ConfigError
from cnnjax.evaluate.ensemble import VIEWS, Member, evaluate, load_member
from cnnjax.evaluate.report import format_table


def _define_flags(flag_values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = {"flag_values": flag_values}
  flags.DEFINE_multi_string("workdir", [], "a trained workdir; repeat for an ensemble", **fv)
  flags.DEFINE_multi_string(
      "weights", [], "published weights SOURCE[:FILE] (e.g. keras/vgg16:vgg16.h5, "
      "torchvision/resnet50.IMAGENET1K_V2) in place of a workdir; repeatable", **fv)
  flags.DEFINE_string("dataset", None, "the data to score (default: the first workdir's "
                      "training dataset; needed with --weights alone)", **fv)
  flags.DEFINE_enum("views", "center", VIEWS, "the test-time view", **fv)
  flags.DEFINE_alias("view", "views", **fv)
  flags.DEFINE_string("split", None, "default: the training config's eval split", **fv)
  flags.DEFINE_integer("batch_size", None,
                       "examples per global batch (default: ~64 images per device)", **fv)
  flags.DEFINE_string("data_dir", None, "default: the training config's", **fv)
  flags.DEFINE_string("scales", None,
                      "dense_multiscale scales Q, comma-separated (default: the paper's)", **fv)
  flags.DEFINE_enum("which", "latest", ("latest", "best"), "which checkpoint of each workdir",
                    **fv)
  flags.DEFINE_enum("ema", "auto", ("auto", "yes", "no"),
                    "evaluate the EMA parameters (auto: when the run kept them)", **fv)
  flags.DEFINE_string("output", None, "write the JSON report here", **fv)
  flags.DEFINE_bool("no_progress", False, "no progress bar", **fv)
  _cli.define_verbose(flag_values)


def _parse_args(argv: Sequence[str]):
  """The parsed flags (absl, as every cnnjax command); a flag error exits with status 2."""
  flag_values, _ = _cli.parse(["cnnjax-evaluate", *argv], _define_flags, prog="cnnjax-evaluate",
                              doc=__doc__)
  return flag_values


def weights_member(source: str, dataset: str) -> Member:
  """Published weights "SOURCE[:FILE]" as an ensemble member scored on `dataset`."""
  from cnnjax import weights  # pylint: disable=import-outside-toplevel
  name, _, path = source.partition(":")
  loaded = weights.load(name, path=path or None)
  return Member(model=loaded.model, variables=loaded.variables, name=name,
                config=loaded.source.eval_config(dataset))


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  if argv is None:  # the command (a process setting; a caller's main(argv) keeps its logging)
    from cnnjax import logs  # pylint: disable=g-import-not-at-top
    logs.set_up(verbose=args.verbose)
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
               for workdir in args.workdir or []]
    dataset = args.dataset or (members[0].config["input"]["dataset"] if members else None)
    if dataset is None:
      raise ConfigError("--weights needs --dataset (a tfds name or image_folder:<path>)")
    members += [weights_member(source, dataset) for source in args.weights or []]
    report = evaluate(members, dataset, view=args.view,
                      batch_size=args.batch_size, split=args.split, data_dir=args.data_dir,
                      scales=scales, progress=not args.no_progress)
  except CnnjaxError as error:
    _cli.print_user_error(error)
    return 2
  report["workdirs"] = list(args.workdir or [])
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
  sys.exit(main())
