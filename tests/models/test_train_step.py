"""A forward pass and an SGD step under jit, for every code path of the zoo.

Narrow (width_multiplier) copies at small resolutions keep the compiles
small; the structure (layer count, branches, shortcuts, grouping) is the
registered network's. The default run compiles one network per code path
(`REPRESENTATIVES`: grouped convs + LRN + dropout, VGG's LRN and its 1x1 +
BN layers, GoogLeNet with its auxiliary heads, bottleneck + projection
shortcuts, basic blocks + option A, the scanned 1202-layer network); every other registered name differs from one of
them only in depth or in a table column, and is traced in train mode at full
size by test_registry.py. CNNJAX_TEST_ALL_MODELS=1 compiles every distinct
registered network (about 4 CPU-seconds each).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.models as models

# family -> (image side, width multiplier)
SMALL = {
    "alexnet": (64, 1 / 16),
    "vgg": (32, 1 / 16),
    "googlenet": (32, 1 / 16),
    "resnet": (32, 1 / 16),
    "cifar_resnet": (16, 1 / 4),
}
DEEP = {"resnet101", "resnet152", "plain101", "plain152", "cifar_resnet56",
        "cifar_resnet110", "cifar_resnet1202", "cifar_plain56", "cifar_plain110"}
REPRESENTATIVES = ("alexnet", "vgg_a_lrn", "vgg_c_bn", "googlenet", "resnet50", "cifar_resnet20",
                   "cifar_resnet1202")


def distinct_models() -> list[str]:
  """One name per distinct network (aliases such as vgg16 = vgg_d dropped)."""
  seen, names = set(), []
  for name in models.list_models():
    spec = models.get_spec(name)
    key = (spec.module, tuple(sorted((k, repr(v)) for k, v in spec.kwargs.items())))
    if key not in seen:
      seen.add(key)
      names.append(name)
  return names


def models_to_compile() -> list[str]:
  if os.environ.get("CNNJAX_TEST_ALL_MODELS"):
    return distinct_models()
  return list(REPRESENTATIVES)


def test_aliases_are_the_same_network():
  assert models.get_spec("vgg16").kwargs == models.get_spec("vgg_d").kwargs
  assert len(distinct_models()) == len(models.list_models()) - 8  # 4 aliases, with and without BN
  assert set(REPRESENTATIVES) <= set(distinct_models())
  assert {models.get_spec(name).family for name in REPRESENTATIVES} == set(SMALL)


@pytest.mark.parametrize("name", models_to_compile())
def test_forward_and_sgd_step(name, make_variables, make_train_step, fast_compile):
  family = models.get_spec(name).family
  size, width = SMALL[family]
  overrides = {"width_multiplier": width}
  if name in DEEP:
    overrides["scan_blocks"] = True
  model = models.create(name, num_classes=5, **overrides)
  images = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
  labels = jnp.array([0, 3])
  variables = make_variables(model, images)
  step = fast_compile(make_train_step(model), variables, images, labels, jax.random.key(2))
  loss, logits, feats, new_variables, grads = step(variables, images, labels, jax.random.key(2))

  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  assert feats["pre_logits"].ndim == 2 and feats["pre_logits"].shape[0] == 2
  grad_norm = sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(grads))
  assert np.isfinite(grad_norm) and grad_norm > 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["params"],
                       new_variables["params"])
  assert any(jax.tree.leaves(moved))
  if "batch_stats" in variables:
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                           new_variables["batch_stats"])
    # Every BN layer's running averages moved in train mode.
    assert all(jax.tree.leaves(changed))
  if family == "googlenet":
    assert len(feats["aux_logits"]) == 2
    assert all(a.shape == (2, 5) for a in feats["aux_logits"])
