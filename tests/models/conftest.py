"""Fixtures of the model tests: cheap variables and a cheap compiled train step.

Compiles here use XLA's backend optimisation level 0 and the classic CPU
fusion code generator: the tests check values, not speed, and together these
compile the small networks 4-5x faster on the CPU (an option a future XLA
no longer knows is dropped, not fatal). Variables are drawn on the host from the shapes that
`jax.eval_shape(model.init)` reports, because compiling `model.init` (one
random-number kernel per parameter) costs more than the train step itself;
`test_init.py` covers the real initialisers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def compile_fast(function: Callable[..., Any], *args: Any) -> Callable[..., Any]:
  """jit + lower + compile with `FAST_COMPILE`; returns the executable."""
  lowered = jax.jit(function).lower(*args)
  options = dict(FAST_COMPILE)
  while True:
    try:
      return lowered.compile(compiler_options=options)
    except Exception as error:  # pylint: disable=broad-except
      unknown = [name for name in options if name in str(error)]
      if "No such compile option" not in str(error) or not unknown:
        raise
      for name in unknown:
        del options[name]


def host_variables(model: nn.Module, images: jax.Array, seed: int = 0) -> dict[str, Any]:
  """Variables with the shapes of `model.init`, drawn with NumPy (no compile).

  Kernels ~ N(0, 2 / fan_in) (He), BN scales 1, biases 0, running mean 0, var 1.
  """
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                         images, train=False))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    # A scanned stage stacks its blocks on axis 0; fan-in ignores that axis.
    fan_in = int(np.prod(leaf.shape[-4:-1] if len(leaf.shape) >= 4 else leaf.shape[:-1]))
    values = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), leaf.shape)
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def train_step_fn(model: nn.Module, learning_rate: float = 0.01):
  """(variables, images, labels, key) -> (loss, new_variables, grads): plain SGD."""

  def step(variables, images, labels, key):
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p):
      (logits, feats), new_state = model.apply(
          {"params": p, **state}, images, train=True, features=True,
          rngs={"dropout": key}, mutable=["batch_stats"])
      log_probs = jax.nn.log_softmax(logits)
      loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
      return loss, (logits, feats, new_state)

    (loss, (logits, feats, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    new_params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
    return loss, logits, feats, {"params": new_params, **new_state}, grads

  return step


@pytest.fixture
def fast_compile():
  return compile_fast


@pytest.fixture
def make_variables():
  return host_variables


@pytest.fixture
def make_train_step():
  return train_step_fn
