"""A fresh network's first loss is near chance, ln(num_classes), with its defaults.

The check: the registered initialisers (real `model.init`), then one forward
pass with BatchNorm in training mode (batch statistics, as the first train
step sees them; a fresh model's running statistics are mean 0, var 1, which
are not the statistics of its activations) on normalised random images with
random labels. A loss far above ln C means large first logits and a first
update too large for the paper's learning rate (benchmarks/cifar_init.py).

Every listed network is held to 0.5 with its registered defaults. The CIFAR
networks run at their native size (32 px, full width) at the shallowest and
deepest depths, plain and residual (56 and deeper with scanned stages, so one
block is compiled per stage); the ImageNet families at 1/8 width at their
native 224 px, one network per family, block type and initialiser (the other
depths share the same initialisers and layers; a compile per network is
what costs, so the list is kept short). Width does not move the first loss
much: every initialiser scales with fan-in, BN normalises each channel, and
the logits' per-class offset does not grow with the classifier's fan-in.
The options that choose a residual branch's first scale are checked too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import cnnjax.models
from cnnjax.errors import ModelError

BATCH = 8
TOLERANCE = 0.5
# name -> overrides (none change the initialisation)
CIFAR_NETS = {
    "cifar_plain20": {},
    "cifar_plain110": {"scan_blocks": True},
    "cifar_resnet20": {},
    "cifar_resnet56": {"scan_blocks": True},
    "cifar_resnet110": {"scan_blocks": True},
    "cifar_resnet1202": {"scan_blocks": True},
}
NARROW = {"width_multiplier": 0.125}
IMAGENET_NETS = {
    "alexnet": NARROW,
    "vgg11": NARROW,
    "vgg16_bn": NARROW,
    "googlenet_bn": NARROW,
    "resnet18": NARROW,
    "resnet50": NARROW,
}


def initial_loss(compile_fast, name: str, overrides: dict) -> tuple[float, float]:
  """(cross-entropy of the fresh model, ln num_classes)."""
  spec = cnnjax.models.get_spec(name)
  model = cnnjax.models.create(name, **overrides)
  images = jax.random.normal(jax.random.key(1), (BATCH, spec.image_size, spec.image_size, 3))
  labels = jax.random.randint(jax.random.key(2), (BATCH,), 0, spec.num_classes)

  def loss(images, labels):
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(3)}
    variables = model.init(rngs, images[:1], train=False)
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(4)})
    if isinstance(logits, tuple):  # GoogLeNet's auxiliary classifiers: the main one
      logits = logits[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return float(compile_fast(loss, images, labels)(images, labels)), math.log(spec.num_classes)


@pytest.mark.parametrize("name", sorted({**CIFAR_NETS, **IMAGENET_NETS}))
def test_initial_loss_is_near_chance(fast_compile, name):
  overrides = {**CIFAR_NETS, **IMAGENET_NETS}[name]
  loss, chance = initial_loss(fast_compile, name, overrides)
  assert abs(loss - chance) < TOLERANCE, (name, loss, chance)


@pytest.mark.parametrize("name, overrides", [
    ("cifar_resnet56", {"scan_blocks": True, "residual_scale_init": 1.0}),
    ("vgg16_bn", {**NARROW, "dense_init": "glorot"}),
])
def test_the_other_initialisation_starts_far_from_chance(fast_compile, name, overrides):
  """Why the defaults are what they are (resnet.CIFAR_RESNET_INIT, vgg.VGG_BN_INIT): the
  papers' / torchvision's other choice, kept as an option, starts well above chance."""
  loss, chance = initial_loss(fast_compile, name, overrides)
  assert loss > chance + 0.5, (name, loss, chance)


@pytest.mark.parametrize("name, overrides, expected", [
    ("cifar_resnet20", {}, 1 / math.sqrt(4)),  # the default: 1/sqrt(total blocks)
    ("cifar_resnet20", {"residual_scale_init": 0.0}, 0.0),
    ("cifar_resnet20", {"residual_scale_init": 1.0}, 1.0),
    ("cifar_resnet20", {"residual_scale_init": 0.5}, 0.5),
    ("resnet18", {}, 0.0),  # the ImageNet default
    ("resnet18", {"residual_scale_init": 1.0}, 1.0),
    ("cifar_plain20", {}, 1.0),
])
def test_residual_branch_scales_start_where_the_options_say(name, overrides, expected):
  model = cnnjax.models.create(name, stage_sizes=(2, 2), width_multiplier=0.125, **overrides)
  size = 32 if name.startswith("cifar") else 64
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
  for stage in ("stage1", "stage2"):
    for block in ("block1", "block2"):
      convs = variables["params"][stage][block]
      assert (convs["conv1"]["bn"]["scale"] == 1.0).all()
      assert abs(convs["conv2"]["bn"]["scale"] - expected).max() < 1e-6, (stage, block)


@pytest.mark.parametrize("bad", ["small", -0.5, float("nan")])
def test_a_residual_scale_init_that_is_not_a_scale_is_refused(bad):
  # create checks it with every other numeric option (cnnjax.models.options.RANGES).
  with pytest.raises(ModelError, match=f"residual_scale_init={bad!r}"):
    cnnjax.models.create("cifar_resnet20", residual_scale_init=bad)
