r"""Fine-tuning published ImageNet weights on an image folder (or any dataset).

Run:
  python train.py --config cnnjax/configs/finetune.py:weights=torchvision/resnet50.IMAGENET1K_V2,dataset=image_folder:/data/flowers \
      --workdir workdirs/flowers_resnet50
  python train.py --config cnnjax/configs/finetune.py:weights=keras/vgg16,path=/models/vgg16.h5,dataset=image_folder:/data/pets \
      --workdir workdirs/pets_vgg16

Arguments (comma-separated key=value): `weights=` a published source
(`cnnjax.weights.list_weights()`; default torchvision/resnet50.IMAGENET1K_V2),
`path=` a local file of those weights (default: the origin's download and
cache), `dataset=` a tfds name or image_folder:<path> (default: the offline
digits, to try the recipe).

What it does: the network of those weights (config.model.name and the options
they need, e.g. Keras's v1 ResNets) starts from them (config.model.init_from):
every layer whose shape matches is copied, the classifier is new when the
dataset has another number of classes, and the run's log names both. Inputs
are normalised as the weights were trained: torchvision's mean/std
("imagenet"), or Caffe's ImageNet mean for Keras's Caffe weights
("caffe_mean"). Training: SGD momentum 0.9, Nesterov, lr 0.01 with 1 epoch of
warm-up then cosine, weight decay 1e-4 on kernels, batch 64, 10 epochs,
Inception-style random crops at 224 and flips; validation on the centre crop.

Hardware: one GPU fits batch 64 of ResNet-50 or VGG-16 at 224 px; on a CPU
shorten it (--config.input.image_size=64 --config.run.num_steps=20) to see it run.
Result: not measured here (it depends on the dataset); tests/weights/test_imported_resnet18.py
fine-tunes ResNet-18 on a 2-class folder and checks that the loss falls and
every layer but the classifier starts from the weights.
"""

from cnnjax.configs import base

DEFAULT_WEIGHTS = "torchvision/resnet50.IMAGENET1K_V2"


def get_config(arg=None):
  from cnnjax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  words, pairs = base.parse_arg(arg)
  unknown = words + [key for key in pairs if key not in ("weights", "path", "dataset")]
  if unknown:
    raise ConfigError(f"finetune.py takes weights=<source>, path=<file>, dataset=<name>; "
                      f"got {unknown}")
  # The weights' catalogue is plain data (no JAX): which network, which options.
  from cnnjax.weights import catalogue  # pylint: disable=import-outside-toplevel
  source = catalogue.get_source(pairs.get("weights", DEFAULT_WEIGHTS))
  c = base.get_base_config()
  c.model.name = source.model
  c.model.kwargs = dict(source.model_kwargs)
  c.model.init_from = source.name + (f":{pairs['path']}" if pairs.get("path") else "")
  c.input.dataset = pairs.get("dataset", "digits")
  c.input.normalize = source.convention.pipeline_normalize
  c.input.image_size = source.image_size
  c.input.augment = "inception"
  c.eval.view = "center"
  c.run.batch_size = 64
  c.run.num_epochs = 10.0
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_mask = "kernels"
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_epochs = 1.0
  c.eval.every_epochs = 1.0
  c.checkpoint.every_epochs = 1.0
  c.run.log_every_steps = 10
  return base.finalize(c)
