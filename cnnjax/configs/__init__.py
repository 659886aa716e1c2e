"""Training recipes, one `get_config(arg=None)` per file.

Every recipe starts from `base.get_base_config()`, every setting the trainer
understands with its default, grouped by subsystem (`config.model.name`,
`config.optimizer.learning_rate`, ...; cnnjax/train/config.py lists the
groups), and overrides the values its paper used.
The docstring of each recipe carries the command that runs it,
the hardware it assumes and the published result it aims at.

| file | recipe |
| --- | --- |
| `quickstart.py` | offline `digits` dataset + CIFAR ResNet-20 on a CPU (`cnnjax-train`'s default) |
| `alexnet_imagenet.py` | AlexNet (2012) on ILSVRC-2012 |
| `vgg_imagenet.py` | VGG A..E (arg: `D`, `D,jitter`, `E,jitter,init_from=...`) |
| `googlenet_imagenet.py` | GoogLeNet / Inception v1 |
| `resnet_imagenet.py` | ResNet-18..152 and plain nets (arg: `50`, `34,plain`, `50,v1`) |
| `resnet_cifar10.py` | CIFAR-10 ResNets 20..1202 and plain nets (arg: `110`, `56,plain`) |
| `finetune.py` | published ImageNet weights fine-tuned on any dataset (arg: `weights=keras/vgg16,path=...,dataset=image_folder:...`) |

Importing this package imports nothing heavy; building a recipe imports
ml_collections and the training code, where the defaults are declared.
"""

import os

RECIPES = (
    "quickstart",
    "alexnet_imagenet",
    "vgg_imagenet",
    "googlenet_imagenet",
    "resnet_imagenet",
    "resnet_cifar10",
    "finetune",
)


def recipe_path(name: str) -> str:
  """The file path of a recipe, for `config_flags` (`cnnjax-train --config <name>` resolves it)."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")


def get_recipe(name: str, arg: str | None = None):
  """Loads a recipe by name, as `--config cnnjax/configs/<name>.py:<arg>` would."""
  import importlib  # pylint: disable=g-import-not-at-top

  from cnnjax.errors import ConfigError, close_matches  # pylint: disable=g-import-not-at-top
  if name not in RECIPES:
    raise ConfigError(f"unknown recipe {name!r}: {close_matches(name, RECIPES)}")
  module = importlib.import_module(f"cnnjax.configs.{name}")
  return module.get_config(arg) if arg is not None else module.get_config()
