"""`deepen`: a deeper net built from a trained shallower one computes the same function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ModelError
from cnnjax.models.deepen import deepen

SIZE = 8


IMAGES = np.random.default_rng(3).normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)


def _trained_like(variables, seed):
  """Variables as after training: random weights, BN statistics away from (0, 1)."""
  rng = np.random.default_rng(seed)
  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if "var" in name:
      return rng.uniform(0.5, 2.0, leaf.shape).astype(leaf.dtype)
    return (np.asarray(leaf) + rng.normal(0, 0.1, leaf.shape)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize("family, residual", [("cifar_plain", False), ("cifar_resnet", True)])
def test_deepened_net_computes_the_shallow_function(family, residual, make_variables,
                                                    fast_compile):
  shallow_model = models.create(f"{family}20", width_multiplier=0.25)
  deep_model = models.create(f"{family}32", width_multiplier=0.25)
  shallow = _trained_like(make_variables(shallow_model, IMAGES, 0), 1)
  deep = make_variables(deep_model, IMAGES, 2)
  built = deepen(shallow, deep, residual=residual)
  expected = fast_compile(shallow_model.apply, shallow, IMAGES)(shallow, IMAGES)
  deep_apply = fast_compile(deep_model.apply, deep, IMAGES)
  np.testing.assert_allclose(deep_apply(jax.tree.map(jnp.asarray, built), IMAGES), expected,
                             rtol=1e-4, atol=1e-4)
  # the deep net's own variables compute something else (the test can fail)
  assert np.abs(deep_apply(deep, IMAGES) - expected).max() > 1e-2
  # inputs untouched; copied layers equal
  np.testing.assert_array_equal(built["params"]["fc"]["kernel"], shallow["params"]["fc"]["kernel"])


def test_refuses_mismatched_nets_and_wrong_blocks(make_variables):
  def variables(name, width):
    return make_variables(models.create(name, width_multiplier=width), IMAGES)
  small = variables("cifar_plain20", 0.25)
  wider = variables("cifar_plain32", 0.5)
  with pytest.raises(ModelError, match="differ only in their block counts"):
    deepen(small, wider, residual=False)
  with pytest.raises(ModelError, match="at least as many blocks"):
    deepen(variables("cifar_plain32", 0.25), small, residual=False)
  with pytest.raises(ModelError, match="stage"):
    deepen({"params": {"fc": {}}}, small, residual=False)
