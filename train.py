"""Train a cnnjax recipe from a checkout: the same command as `cnnjax-train` and `python -m cnnjax.train`.

  python train.py                                    # offline quickstart (digits, ResNet-20, CPU)
  python train.py --config resnet_cifar10:110 --workdir workdirs/r110

Flags: `python train.py --help`; the command itself is cnnjax/train/__main__.py.
"""

import sys

from cnnjax.train.__main__ import main

if __name__ == "__main__":
  sys.exit(main())
