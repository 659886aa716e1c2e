"""Deep CIFAR ResNets at the paper's learning rate: does the initialisation start them well?

    python benchmarks/cifar_init.py --inits scaled_residual          # the default, 5 seeds
    python benchmarks/cifar_init.py --models cifar_resnet110 --inits scaled_residual
    python benchmarks/cifar_init.py --seeds 0                        # every initialisation

The loop is the plainest one the paper describes (He et al. 2016, CIFAR-10):
SGD with momentum 0.9, weight decay 1e-4 on the convolution and dense
kernels, learning rate 0.1 from the first step (ResNet-110: 0.01 for the
first `--warmup` steps, the paper's warm-up scaled down, then 0.1), batch 64,
BatchNorm in training mode. The data are scikit-learn's 8x8 digits upscaled
to 32x32x3 (each pixel repeated 4x4, three equal channels, scaled to zero mean
and unit variance), so a run needs no download and no GPU (needs
`pip install scikit-learn`).

Each row trains one (model, initialisation, parts, seed) for `--steps` steps
and prints the first loss, the loss at step 100 and the mean of the last 50
losses. Chance is ln 10 = 2.30: a run whose last-50 mean is still near it has
not started learning. Initialisations compared:

* `lecun`: the paper's initialisation (LeCun-normal classifier, BN scales 1;
  `residual_scale_init=1.0`): the residual stream's variance grows with
  every block, the first logits are large (initial loss ~4.5 for ResNet-56)
  and the first update is too big.
* `zero_fc`: the classifier's kernel starts at zero (initial loss exactly ln 10).
* `gaussian_fc`: the classifier's kernel ~ N(0, 0.01) (Goyal et al. 2017), BN scales 1.
* `zero_residual`: the last BN scale of each residual branch starts at zero,
  so every block starts as the identity (`residual_scale_init=0.0`).
* `scaled_residual`: the last BN scale of each residual branch starts at
  1/sqrt(total blocks), so all branches together add ~1 to the stream's
  variance at any depth (the CIFAR ResNets' default).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import cnnjax.models  # noqa: E402
from cnnjax.models import cpu  # noqa: E402

INITS = {
    "lecun": {"dense_init": "lecun", "residual_scale_init": 1.0},
    "zero_fc": {"dense_init": "zeros", "residual_scale_init": 1.0},
    "gaussian_fc": {"dense_init": "gaussian", "residual_scale_init": 1.0},
    "zero_residual": {"dense_init": "lecun", "residual_scale_init": 0.0},
    "scaled_residual": {"dense_init": "lecun", "residual_scale_init": "inverse_sqrt_blocks"},
}


def digits_32px() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as 32x32x3 float32 images (zero mean, unit variance) and labels."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.kron(digits.images, np.ones((4, 4)))[..., None].repeat(3, axis=-1)
  images = (images - images.mean()) / images.std()
  return images.astype(np.float32), digits.target.astype(np.int32)


def decay_mask(params):
  """Weight decay on kernels only (not on BN scales/offsets or biases)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_train_step(model, optimizer):
  def loss_fn(params, batch_stats, images, labels):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  @jax.jit
  def train_step(params, batch_stats, opt_state, images, labels):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  return train_step


def learning_rate(step: int, warmup: int) -> float:
  return 0.01 if step < warmup else 0.1


def run(name: str, init: str, parts: str, seeds, steps: int, warmup: int, batch: int) -> None:
  images, labels = digits_32px()
  extra = cpu.parts() if parts == "cpu" else {}
  settings = dict(INITS[init])
  if "plain" in name and settings["residual_scale_init"] != 1.0:
    print(f"{name} {init}: skipped (a plain network has no residual branch)")
    return
  model = cnnjax.models.create(name, **settings, **extra)
  optimizer = optax.inject_hyperparams(
      lambda learning_rate: optax.chain(
          optax.add_decayed_weights(1e-4, mask=decay_mask),
          optax.sgd(learning_rate, momentum=0.9)))(learning_rate=0.1)
  train_step = make_train_step(model, optimizer)
  for seed in seeds:
    rng = np.random.default_rng(seed)
    variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(images[:2]))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
      index = rng.choice(len(images), batch, replace=False)
      opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate(step, warmup))
      params, batch_stats, opt_state, loss = train_step(
          params, batch_stats, opt_state, images[index], labels[index])
      losses.append(float(loss))
    seconds = time.perf_counter() - start
    at_100 = losses[min(100, steps) - 1]
    print(f"{name:16s} {init:13s} {parts:7s} seed {seed}: first {losses[0]:.3f}  "
          f"step {min(100, steps)} {at_100:.3f}  last-50 mean {np.mean(losses[-50:]):.3f}  "
          f"({seconds:.0f} s incl. compile)", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["cifar_resnet56"])
  parser.add_argument("--inits", nargs="+", default=list(INITS), choices=list(INITS))
  parser.add_argument("--parts", nargs="+", default=["default"], choices=["default", "cpu"])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--warmup", type=int, default=None,
                      help="steps at lr 0.01 first (default: 20 for ResNet-110, else 0)")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}; chance = ln 10 = {math.log(10):.3f}")
  for name in args.models:
    warmup = args.warmup if args.warmup is not None else (20 if "110" in name else 0)
    for parts in args.parts:
      for init in args.inits:
        run(name, init, parts, args.seeds, args.steps, warmup, args.batch)


if __name__ == "__main__":
  main()
