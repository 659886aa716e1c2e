"""A model whose outputs are easy to compute by hand, and numpy references."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MeanColourNet(nn.Module):
  """logits = mean RGB of the image @ W + b; pre_logits = the mean RGB.

  Honours the model contract (train, features) and computes nothing a numpy
  one-liner cannot reproduce.
  """

  num_classes: int = 7

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pooled)
    return (logits, {"pre_logits": pooled}) if features else logits


def mean_colour_member(seed: int, num_classes: int = 7):
  model = MeanColourNet(num_classes)
  kernel = np.random.default_rng(seed).normal(scale=0.05, size=(3, num_classes))
  bias = np.random.default_rng(seed + 100).normal(scale=0.3, size=(num_classes,))
  variables = {"params": {"fc": {"kernel": jnp.asarray(kernel, jnp.float32),
                                 "bias": jnp.asarray(bias, jnp.float32)}}}
  return model, variables


def numpy_probs(variables, images: np.ndarray) -> np.ndarray:
  """Softmax of MeanColourNet on [..., H, W, 3] images, in float64."""
  params = variables["params"]["fc"]
  pooled = np.asarray(images, np.float64).mean(axis=(-3, -2))
  logits = pooled @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])
  logits -= logits.max(axis=-1, keepdims=True)
  exp = np.exp(logits)
  return exp / exp.sum(axis=-1, keepdims=True)


def numpy_errors(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  """Top-1 and top-5 error over the masked examples (rank = classes scoring strictly higher)."""
  label_prob = probs[np.arange(len(labels)), labels]
  rank = (probs > label_prob[:, None]).sum(axis=1)
  count = mask.sum()
  return float(((rank >= 1) & mask).sum() / count), float(((rank >= 5) & mask).sum() / count)


def jax_device_count() -> int:
  return jax.device_count()


def random_variables(model, image_shape, seed: int = 0, scale: float = 0.05):
  """Variables shaped like model.init's, filled from numpy.

  Jitting `model.init` compiles a random-number generator per parameter
  shape (seconds for a VGG); these tests need values, not the initialiser.
  """
  shapes = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x),
                          jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(scale=max(scale, 1.0 / np.sqrt(fan_in)), size=leaf.shape),
                       leaf.dtype)

  return jax.tree.map(fill, shapes)
