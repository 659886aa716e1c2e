"""The model zoo as a Markdown table: `cnnjax-models [NAME or PATTERN ...] [--layers]`.

  cnnjax-models                    # every registered model
  cnnjax-models 'resnet*' vgg16    # names or shell-style patterns
  cnnjax-models googlenet --layers # one network layer by layer

Parameters and multiply-adds come from `cnnjax.models.profile` (shape
tracing only, nothing is compiled), at each network's paper resolution:
224x224 for ImageNet networks, 32x32 for the CIFAR ones. A row counts the
network that runs at test time: GoogLeNet without its two auxiliary
classifiers (the published 6,998,552 parameters); the footnote gives what
`init` creates with them (`aux_logits=True`, the default).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Sequence

from cnnjax.errors import ModelError, close_matches
from cnnjax.models.profiling import profile
from cnnjax.models.registry import get_spec, list_models


def select(patterns: Sequence[str]) -> list[str]:
  """The registered names matching any of `patterns` (names or fnmatch patterns), in order."""
  registered = list_models()
  if not patterns:
    return registered
  chosen: list[str] = []
  for pattern in patterns:
    matched = fnmatch.filter(registered, pattern)
    if not matched:
      raise ModelError(f"no model matches {pattern!r}; {close_matches(pattern, registered)} "
                       "(`cnnjax-models` lists them all)")
    chosen.extend(name for name in matched if name not in chosen)
  return chosen


def model_table(names: list[str] | None = None) -> str:
  """The Markdown table of `names` (default: every registered model), with its footnotes."""
  lines = ["| model | family | params | GMACs | input | description |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
  notes = []
  for name in names or list_models():
    spec = get_spec(name)
    result = profile(name, **spec.profile_kwargs)
    mark = ""
    if spec.profile_kwargs:
      mark = f" [{len(notes) + 1}]"
      options = ", ".join(f"{key}={value!r}" for key, value in spec.profile_kwargs.items())
      notes.append(f"- [{len(notes) + 1}] `{name}` counted with {options}; as `create` builds it "
                   f"by default, `init` makes {profile(name).params:,} parameters.")
    lines.append(f"| `{name}` | {spec.family} | {result.params:,}{mark} | "
                 f"{result.macs / 1e9:.2f} | {result.image_size} | {spec.description} |")
  return "\n".join(lines + ([""] + notes if notes else []))


def _define_flags(flag_values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_bool("layers", False, "print the per-layer profile of each named model instead",
                    flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
  from cnnjax import _cli  # pylint: disable=g-import-not-at-top
  flag_values, patterns = _cli.parse(list(sys.argv if argv is None else argv), _define_flags,
                                     prog="cnnjax-models", doc=__doc__)
  try:
    names = select(patterns)
  except ModelError as error:
    _cli.print_user_error(error)
    return _cli.USAGE_ERROR
  if flag_values.layers:
    for name in names:
      print(profile(name), end="\n\n")
  else:
    print(model_table(names))
  return 0


if __name__ == "__main__":
  sys.exit(main())
