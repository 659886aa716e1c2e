"""Prints the model zoo as a Markdown table: `python -m cnnjax.models`.

Parameters and multiply-adds come from `cnnjax.models.profile` (shape
tracing only, nothing is compiled), at each network's paper resolution:
224x224 for ImageNet networks, 32x32 for the CIFAR ones. GoogLeNet rows count
the network without its auxiliary heads (they are dropped at test time).
"""

from __future__ import annotations

import argparse

from cnnjax.models.profiling import profile
from cnnjax.models.registry import get_spec, list_models


def model_table(names: list[str] | None = None) -> str:
  """The Markdown table of `names` (default: every registered model)."""
  lines = ["| model | family | params | GMACs | input | description |",
           "| --- | --- | ---: | ---: | ---: | --- |"]
  for name in names or list_models():
    spec = get_spec(name)
    result = profile(name, **spec.profile_kwargs)
    lines.append(f"| `{name}` | {spec.family} | {result.params:,} | {result.macs / 1e9:.2f} "
                 f"| {result.image_size} | {spec.description} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="models to list (default: all)")
  parser.add_argument("--layers", action="store_true",
                      help="print the per-layer profile of each named model instead")
  args = parser.parse_args()
  if args.layers:
    for name in args.names or list_models():
      print(profile(name), end="\n\n")
  else:
    print(model_table(args.names))


if __name__ == "__main__":
  main()
