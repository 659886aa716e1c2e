"""Writes recipes_before.json: every recipe and documented argument, resolved flat.

The file records what `cnnjax.train.config.validate` saw for each recipe
while the settings were one flat dict; test_recipe_equivalence.py checks that
the grouped settings of the same recipes hold the same values. Run once from
the repository root: `python tests/train/make_recipes_before.py` (it wrote the file while the
settings were flat; run now, it would write the nested tree).
"""

from __future__ import annotations

import json
import os

from cnnjax.configs import get_recipe

# (recipe, argument) pairs: each docstring's documented arguments.
CASES = [
    ("quickstart", None),
    ("alexnet_imagenet", None),
    ("googlenet_imagenet", None),
    *[("vgg_imagenet", arg) for arg in (
        None, "A", "A_LRN", "B", "C", "D", "E", "D,jitter", "D,S=384", "E,jitter",
        "D,init_from=workdirs/vgg_a", "D,S=384,init_from=workdirs/vgg_d_256",
        "D,jitter,init_from=workdirs/vgg_d_384")],
    *[("resnet_imagenet", arg) for arg in (
        None, "18", "18,A", "34", "34,A", "34,C", "34,plain", "18,plain", "50", "50,v1",
        "50,v1.5", "101,v1", "152,v1", "50,bf16")],
    *[("resnet_cifar10", arg) for arg in (
        None, "20", "32", "44", "56", "110", "1202", "56,plain", "20,test", "110,test")],
    *[("finetune", arg) for arg in (
        None, "weights=torchvision/resnet50.IMAGENET1K_V2,dataset=image_folder:/data/flowers",
        "weights=keras/vgg16,path=/models/vgg16.h5,dataset=image_folder:/data/pets",
        "weights=torchvision/resnet18.IMAGENET1K_V1")],
]


def case_key(name: str, arg: str | None) -> str:
  return name if arg is None else f"{name}:{arg}"


def resolve() -> dict:
  """Each case's recipe as plain JSON values (as the flat layout's validate saw it)."""
  return {case_key(name, arg): json.loads(json.dumps(get_recipe(name, arg).to_dict(),
                                                     default=list))
          for name, arg in CASES}


if __name__ == "__main__":
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes_before.json")
  with open(path, "w") as f:
    json.dump(resolve(), f, indent=1, sort_keys=True)
    f.write("\n")
  print(path)
