r"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) on ILSVRC-2012.

Run:
  python train.py --config cnnjax/configs/alexnet_imagenet.py \
      --workdir workdirs/alexnet --config.input.data_dir=/path/to/tensorflow_datasets

Hardware assumed: one host with 8 GPUs (16 GiB each is plenty; the paper
used two 3 GB GTX 580s for five to six days). The global batch of 128 is
split over the devices; the model has no BatchNorm, so the device count does
not change the mathematics.

Recipe (paper, Section 5): SGD, batch 128, momentum 0.9, weight decay 5e-4
on the weights, lr 0.01 divided by 10 when the validation error stops
improving (three times), about 90 epochs; random 224 crops of the 256x256
centre, horizontal flips, PCA colour augmentation (sigma 0.1), per-pixel
mean subtraction. Initialisation (N(0, 0.01), biases of 1) is the model's.

Aims at: ILSVRC-2012 validation 40.7% top-1 / 18.2% top-5 error (one CNN,
10-crop test: `cnnjax` evaluation with view "10crop"); the periodic
centre-crop validation logged here reads about 1.5 points higher.
"""

from cnnjax.configs import base


def get_config(arg=None):
  del arg
  c = base.get_base_config()
  c.model.name = "alexnet"
  c.input.dataset = "imagenet2012"
  c.input.normalize = "per_pixel"
  c.input.augment = "alexnet"
  c.input.augment_kwargs = {"pca_color": True, "pca_alpha_std": 0.1}
  c.input.image_size = 224
  c.run.batch_size = 128
  c.run.num_epochs = 90.0
  c.optimizer.learning_rate = 0.01
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
