"""VGG's training-scale chain: S=256 -> S=384 (lr 1e-3) -> jitter, each warm-started in full."""

import jax
import numpy as np
import pytest

from cnnjax.configs import vgg_imagenet
from cnnjax.models import warm_start

TINY = {"width_multiplier": 1 / 16, "fc_features": 64}


@pytest.mark.parametrize("arg,lr", [
    ("D", 0.01), ("D,init_from=/w/vgg_a", 0.01),            # S=256: from scratch, or from net A
    ("D,S=384,init_from=/w/d256", 1e-3),                     # the paper's S=384 step
    ("D,jitter,init_from=/w/d384", 1e-3),                    # jitter fine-tuned from S=384
    ("D,S=384", 0.01), ("D,jitter", 0.01),                   # from scratch: not the paper's
])
def test_chain_learning_rates(arg, lr):
  config = vgg_imagenet.get_config(arg)
  assert config.optimizer.learning_rate == lr
  assert config.model.init_from == (arg.split("init_from=")[1] if "init_from=" in arg else "")


def test_docstring_lists_the_chain_in_order():
  doc = vgg_imagenet.__doc__
  steps = [doc.index(s) for s in (":D,init_from=workdirs/vgg_a", ":D,S=384,init_from=workdirs/vgg_d_256",
                                   ":D,jitter,init_from=workdirs/vgg_d_384")]
  assert steps == sorted(steps)
  assert "not the paper's recipe" in doc


def _variables(name, seed):
  from cnnjax import models
  model = models.create(name, num_classes=10, **TINY)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                                             train=False))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


@pytest.mark.parametrize("name", ["vgg_d", "vgg_d_bn"])
def test_same_configuration_copies_every_layer(name):
  source, target = _variables(name, 1), _variables(name, 2)
  merged, mapping = warm_start.warm_start_vgg(target, source)
  assert mapping == {layer: layer for layer in target["params"]}
  assert jax.tree_util.tree_structure(merged) == jax.tree_util.tree_structure(dict(target))
  for got, want in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(dict(source))):
    np.testing.assert_array_equal(got, want)
  if name.endswith("_bn"):
    assert "batch_stats" in merged


def test_net_a_into_a_deeper_net_still_maps_its_seven_layers():
  source, target = _variables("vgg_a", 1), _variables("vgg_d", 2)
  merged, mapping = warm_start.warm_start_vgg(target, source)
  assert set(mapping) == {"conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"}
  for layer in ("conv1_2", "conv4_1"):  # not in A's seven: left as initialised
    for got, want in zip(jax.tree_util.tree_leaves(merged["params"][layer]),
                         jax.tree_util.tree_leaves(target["params"][layer])):
      np.testing.assert_array_equal(got, want)
