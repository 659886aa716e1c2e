r"""ResNet-18..152 and plain nets (He et al., CVPR 2016) on ILSVRC-2012.

Run (argument: depth, then options):
  python train.py --config cnnjax/configs/resnet_imagenet.py:50 --workdir workdirs/resnet50
  python train.py --config cnnjax/configs/resnet_imagenet.py:34,plain --workdir workdirs/plain34

  depth    18, 34, 50, 101 or 152
  plain    the same stack without shortcuts (18 and 34, the degradation study)
  v1       the paper's stride on the first 1x1 of a bottleneck (default v1.5:
           stride on the 3x3, as torchvision and the Flax example)
  bf16     bfloat16 compute (params and optimiser state stay float32)

Hardware assumed: one host with 8 GPUs (A100/H100 class); global batch 256,
32 per device, BatchNorm statistics per device as in the paper (its 8 GPUs).

Recipe (paper, Section 3.4): SGD, batch 256, momentum 0.9, weight decay 1e-4,
lr 0.1 divided by 10 at epochs 30, 60 and 90 (the paper's "when the error
plateaus"; `--config.schedule=plateau` follows the validation error
instead), 60e4 iterations (~120 epochs); shorter side random in [256, 480],
random 224 crop, flip, per-channel mean subtraction, colour augmentation.

Aims at (top-1 / top-5 validation error, 10-crop test): ResNet-18 27.88,
ResNet-34 25.03 / 7.76 (option A), ResNet-50 22.85 / 6.71, ResNet-101
21.75 / 6.05, ResNet-152 21.43 / 5.71; plain-18 27.94, plain-34 28.54 / 10.02.
"""

from cnnjax.configs import base
from cnnjax.errors import ConfigError

DEPTHS = (18, 34, 50, 101, 152)


def get_config(arg="50"):
  words, pairs = base.parse_arg(arg)
  depths = [int(w) for w in words if w.isdigit()]
  options = [w for w in words if not w.isdigit()]
  unknown = [o for o in options if o not in ("plain", "v1", "v1.5", "bf16")] + list(pairs)
  if len(depths) != 1 or depths[0] not in DEPTHS or unknown:
    raise ConfigError(
        f"resnet_imagenet.py argument {arg!r}: expected a depth in {DEPTHS}, "
        "then optional 'plain', 'v1', 'bf16'")
  depth = depths[0]
  c = base.get_base_config()
  c.model = ("plain" if "plain" in options else "resnet") + str(depth)
  if "v1" in options:
    c.model_kwargs = {"version": "1"}
  c.dtype = "bfloat16" if "bf16" in options else "float32"
  c.dataset = "imagenet2012"
  c.normalize = "per_channel"
  c.augment = "scale_jitter"
  c.augment_kwargs = {"scale_min": 256, "scale_max": 480, "pca_color": True}
  c.image_size = 224
  c.batch_size = 256
  c.num_steps = 600_000
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.weight_decay_mask = "kernels"
  c.schedule = "multistep"
  c.lr_boundaries_epochs = (30.0, 60.0, 90.0)
  c.lr_decay_factor = 0.1
  c.eval_every_epochs = 1.0
  c.checkpoint_every_epochs = 1.0
  c.log_every_steps = 100
  return base.finalize(c)
