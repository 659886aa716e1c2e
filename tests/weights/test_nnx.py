"""A cnnjax network with imported weights used from a flax.nnx project (flax.nnx.bridge)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models, weights

nnx = pytest.importorskip("flax.nnx")


def test_to_nnx_gives_the_linen_logits_and_trains_as_an_nnx_module():
  # Any cnnjax network and its variables (imported ones are tested equal elsewhere);
  # a small one keeps the compilations short.
  model = models.create("cifar_resnet20", stage_sizes=(1, 1, 1), width_multiplier=0.5,
                        num_classes=5)
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  # Non-trivial statistics, so that a wrong copy of batch_stats shows.
  variables = dict(variables, batch_stats=jax.tree.map(
      lambda v: v + 0.3 * jax.random.uniform(jax.random.key(2), v.shape), variables["batch_stats"]))
  module = weights.to_nnx(model, variables)
  want = model.apply(variables, images, train=False)
  np.testing.assert_allclose(module(images, train=False), want, rtol=1e-5, atol=1e-5)
  kinds = {path: type(variable) for path, variable in nnx.to_flat_state(nnx.state(module))}
  assert kinds[("stem", "conv", "kernel")] is nnx.Param
  assert kinds[("stem", "bn", "mean")] is nnx.BatchStat

  class Classifier(nnx.Module):  # an NNX project's own module around the network
    def __init__(self, backbone):
      self.backbone = backbone
      self.scale = nnx.Param(jnp.ones(()))

    def __call__(self, x):
      return self.backbone(x, train=False) * self.scale

  net = Classifier(module)
  optimizer = nnx.Optimizer(net, __import__("optax").sgd(0.01), wrt=nnx.Param)
  labels = jnp.array([1, 3])

  def loss_fn(net):
    logits = net(images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

  @nnx.jit
  def train_step(net, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    return loss

  losses = [float(train_step(net, optimizer)) for _ in range(4)]
  assert losses[-1] < losses[0], losses
