r"""VGG A..E (Simonyan & Zisserman, ICLR 2015) on ILSVRC-2012.

Run (argument: the configuration letter, then options). The paper's chain
for one configuration, in order (Section 3.1, "Training image size"):
  1. S=256 (net A from scratch; deeper nets from net A's layers):
     python train.py --config cnnjax/configs/vgg_imagenet.py:A --workdir workdirs/vgg_a
     python train.py --config cnnjax/configs/vgg_imagenet.py:D,init_from=workdirs/vgg_a \
         --workdir workdirs/vgg_d_256
  2. S=384, every layer from the trained S=256 net, lr 1e-3:
     python train.py --config cnnjax/configs/vgg_imagenet.py:D,S=384,init_from=workdirs/vgg_d_256 \
         --workdir workdirs/vgg_d_384
  3. scale jitter S in [256, 512], fine-tuning every layer of the S=384 net:
     python train.py --config cnnjax/configs/vgg_imagenet.py:D,jitter,init_from=workdirs/vgg_d_384 \
         --workdir workdirs/vgg_d_jitter

  letter   A, A_LRN, B, C, D or E
  jitter   scale jitter S in [256, 512] (default: fixed S=256)
  S=384    fixed training scale 384 instead of 256
  init_from=<workdir>
           warm start (equivalently `--config.model.init_from=<workdir>`): from a
           trained net of the same configuration every layer is copied (steps
           2 and 3); from a trained net A into a deeper net, the first four
           conv layers and the last three FC layers (step 1), the rest random.

Paper vs ours. The paper trains S=384 and the jittered nets only by
fine-tuning (S=384 from S=256 at lr 1e-3; jitter from S=384, learning rate
not stated). Here S=384 or jitter with init_from start at lr 1e-3 (for
jitter our choice, the paper's S=384 rate), then the same plateau
schedule. Without init_from, `:D,S=384` and `:D,jitter` train from scratch
at lr 0.01: possible, but not the paper's recipe, and their results are not
the paper's figures below.

Hardware assumed: one host with 8 GPUs of >= 24 GiB (the paper: 4 Titan
Black GPUs, 2-3 weeks per net). Global batch 256.

Recipe (paper, Section 3.1): SGD, batch 256, momentum 0.9, weight decay
5e-4, dropout 0.5 on fc6/fc7 (the model's), lr 0.01 divided by 10 when the
validation accuracy stops improving (three times), 74 epochs; random 224
crops of the rescaled image, flips, RGB colour shift.

Aims at (top-1 / top-5 validation error): D or E trained with jitter,
multi-scale dense evaluation 24.8 / 7.5 (`python -m cnnjax.evaluate
--workdir <run> --views dense_multiscale`), dense + multi-crop 24.4 / 7.1
(`--views dense+150crop`; 150 crops alone: `--views 150crop`);
single-scale test of D with jitter, Q=384: 25.6 / 8.1 (paper Table 3).
"""

from cnnjax.configs import base
from cnnjax.errors import ConfigError

LETTERS = ("A", "A_LRN", "B", "C", "D", "E")


def get_config(arg="A"):
  words, pairs = base.parse_arg(arg)
  letters = [w for w in words if w.upper() in LETTERS]
  options = [w for w in words if w.upper() not in LETTERS]
  letter = letters[0].upper() if letters else "A"
  unknown = [o for o in options if o != "jitter" and not o.startswith("S=")]
  unknown += [k for k in pairs if k not in ("init_from", "S")]
  if unknown or len(letters) > 1:
    raise ConfigError(
        f"vgg_imagenet.py argument {arg!r}: expected one of {LETTERS}, then "
        "optional 'jitter', 'S=<scale>', 'init_from=<workdir>'; "
        f"not understood: {unknown or letters}")
  c = base.get_base_config()
  c.model.name = "vgg_" + letter.lower()
  c.input.dataset = "imagenet2012"
  c.input.normalize = "per_channel"
  c.input.augment = "scale_jitter"
  scale = int(pairs.get("S", 256))
  if "jitter" in options:
    c.input.augment_kwargs = {"scale_min": 256, "scale_max": 512, "pca_color": True}
  else:
    c.input.augment_kwargs = {"scale_min": scale, "scale_max": scale, "pca_color": True}
  c.input.image_size = 224
  c.model.init_from = pairs.get("init_from", "")
  c.run.batch_size = 256
  c.run.num_epochs = 74.0
  # The paper's fine-tuning steps (S=384, jitter) start at lr 1e-3.
  fine_tune = bool(c.model.init_from) and ("jitter" in options or scale != 256)
  c.optimizer.learning_rate = 1e-3 if fine_tune else 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.weight_decay_mask = "kernels"
  c.schedule.name = "plateau"
  c.schedule.plateau.factor = 0.1
  c.schedule.plateau.patience = 2
  c.schedule.plateau.max_reductions = 3
  c.eval.every_epochs = 1.0
  c.checkpoint.every_epochs = 1.0
  c.run.log_every_steps = 100
  return base.finalize(c)
