r"""CIFAR-10 ResNets and plain nets, 6n+2 layers (He et al., CVPR 2016, Sec. 4.2).

Run (argument: depth, then options):
  python train.py --config cnnjax/configs/resnet_cifar10.py:110 --workdir workdirs/cifar_resnet110
  python train.py --config cnnjax/configs/resnet_cifar10.py:56,plain --workdir workdirs/cifar_plain56

  depth    20, 32, 44, 56, 110 or 1202 (any 6n+2 >= 8 works)
  plain    no shortcuts (the degradation study: 20/32/44/56)
  test     validate on the 10k test set instead of the 45k/5k split

Hardware assumed: one GPU (the paper used two; set `--config.model.bn_group_size=64`
to reproduce its per-GPU statistics on one device). ResNet-20 takes about
an hour on an A100-class GPU; ResNet-1202 needs remat or ~16 GiB.

Recipe: SGD, batch 128, momentum 0.9, weight decay 1e-4, lr 0.1 divided by
10 at 32k and 48k iterations, stop at 64k; 4-pixel padding + random 32x32
crop + flip, per-pixel mean subtraction; trained on 45k images, validated on
the held-out 5k. ResNet-110 and deeper warm up at lr 0.01 until a training
batch's error drops below 80% (about 400 iterations), then 0.1.

Aims at (test error %): ResNet-20 8.75, 32 7.51, 44 7.17, 56 6.97,
110 6.43, 1202 7.93 (paper Table 6).
"""

from cnnjax.configs import base
from cnnjax.errors import ConfigError


def get_config(arg="20"):
  words, pairs = base.parse_arg(arg)
  depths = [int(w) for w in words if w.isdigit()]
  options = [w for w in words if not w.isdigit()]
  unknown = [o for o in options if o not in ("plain", "test")] + list(pairs)
  if len(depths) != 1 or depths[0] < 8 or (depths[0] - 2) % 6 or unknown:
    raise ConfigError(
        f"resnet_cifar10.py argument {arg!r}: expected a depth 6n+2 "
        "(20, 32, 44, 56, 110, 1202), then optional 'plain', 'test'")
  depth = depths[0]
  c = base.get_base_config()
  c.model.name = ("cifar_plain" if "plain" in options else "cifar_resnet") + str(depth)
  if depth >= 110:
    c.model.kwargs = {"scan_blocks": True}
  c.input.dataset = "cifar10"
  c.input.normalize = "per_pixel"
  c.input.augment = "cifar"
  if "test" in options:
    c.input.train_split, c.input.eval_split = "train", "test"
  else:
    c.input.train_split, c.input.eval_split = "train[:45000]", "train[45000:]"
  c.run.batch_size = 128
  c.run.num_steps = 64_000
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_mask = "kernels"
  c.schedule.name = "multistep"
  c.schedule.multistep.boundaries_steps = (32_000, 48_000)
  c.schedule.multistep.factor = 0.1
  if depth >= 110:
    c.schedule.error_warmup.factor = 0.1
    c.schedule.error_warmup.threshold = 0.8
  c.eval.every_steps = 2_000
  c.checkpoint.every_steps = 2_000
  c.run.log_every_steps = 100
  return base.finalize(c)
