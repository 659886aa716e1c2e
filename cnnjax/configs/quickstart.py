r"""Quickstart: CIFAR ResNet-20 on the embedded `digits` dataset, offline, on a CPU.

Run (no arguments needed; this is `cnnjax-train`'s default):
  cnnjax-train
  cnnjax-train --config quickstart --workdir workdirs/quickstart

Hardware assumed: any laptop CPU (measured on a 2-core x86_64 VM).
Dataset: scikit-learn's 1,797 handwritten digits (8x8, upscaled to 32x32x3),
split by cnnjax.data into train and test; no download.

Recipe: SGD with momentum 0.9 and Nesterov, batch 64, weight decay 5e-4 on
kernels, 150 steps (~6.5 epochs of the 1,497 training digits): linear warm-up
over 30 steps then cosine decay of lr 0.1; no augmentation (flips would change
digits), per-channel mean subtraction.

Result (2026-12-04, the 2-core AMD EPYC VM, seed 0): held-out top-1 error
1.00% (3 of the 300 test digits), top-5 error 0%, test loss 0.045
(benchmarks/RESULTS.md, "Deep CIFAR ResNets at the paper's learning rate").
Time, empty compilation cache, idle machine: 1m30s of CPU time, 55-88 s
wall (2026-11-27; benchmarks/RESULTS.md, "Quickstart"). The run is
deterministic: the same machine gives the same numbers every time.
"""

from cnnjax.configs import base


def get_config(arg=None):
  del arg
  c = base.get_base_config()
  c.model.name = "cifar_resnet20"
  c.input.dataset = "digits"
  c.input.normalize = "per_channel"
  c.input.augment = "none"
  c.run.batch_size = 64
  c.eval.batch_size = 128
  c.run.num_steps = 150
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.optimizer.weight_decay_mask = "kernels"
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_steps = 30
  c.run.log_every_steps = 25
  c.eval.every_steps = 75
  c.checkpoint.every_steps = 75
  c.checkpoint.keep = 2
  return base.finalize(c)
