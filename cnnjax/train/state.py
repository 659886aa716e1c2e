"""The train state: every array a run needs to continue exactly, in one pytree.

Array fields (checkpointed, donated to the train step):
  step          int32 scalar, optimiser steps taken (= batches consumed)
  params        float32 parameters
  batch_stats   BatchNorm running statistics (an empty dict for models without BN)
  opt_state     optax state (momentum, injected hyperparameters incl. the learning rate)
  ema_params    Polyak/EMA average of params, or None when off
  rng           uint32[2] key; the dropout key of step t is fold_in(rng, t) (the
                on-device colour augmentations draw from their own folds of it)
  lr_control    data-dependent learning-rate state (see optim.LearningRateControl)

Run-time field (on the device, not checkpointed):
  first_nonfinite  int32[3] (step, quantity, leaf) of the first step whose loss,
                gradient, statistics or update was NaN/Inf; step 0 = none yet.
                From that step on the train step applies nothing, so the loop
                can look at it only at its log/validation/checkpoint boundaries
                and still stop with the exact step and the last finite state.

Static fields (part of the compiled program, never saved): the model's
`apply`, the optax transformation and the `StepRules`.

Needs only jax, flax and optax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from cnnjax.train import optim
from cnnjax.preprocessing.device import DeviceInput

# The array fields, in checkpoint order.
ARRAY_FIELDS = ("step", "params", "batch_stats", "opt_state", "ema_params", "rng", "lr_control")


@dataclasses.dataclass(frozen=True)
class StepRules:
  """What the train step needs besides arrays: the loss and the rate rules."""

  learning_rate_fn: Callable[[jax.Array], jax.Array]
  lr_control: optim.LearningRateControl = optim.LearningRateControl()
  loss: str = "categorical_cross_entropy"
  label_smoothing: float = 0.0
  aux_loss_weight: float = 0.3
  ema_decay: float = 0.0
  # uint8 batches -> network input in the step (colour augmentation and
  # normalisation, see cnnjax.preprocessing.device); None: batches arrive ready.
  device_input: DeviceInput | None = None


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  lr_control: Any
  first_nonfinite: jax.Array
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  rules: StepRules = flax.struct.field(pytree_node=False)

  def variables(self, use_ema: bool = False) -> dict[str, Any]:
    """The model variables for `apply` (EMA params when asked and present)."""
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    out = {"params": params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out

  def arrays(self) -> dict[str, Any]:
    """The checkpointed fields as a dict."""
    return {name: getattr(self, name) for name in ARRAY_FIELDS}


def no_nonfinite() -> jax.Array:
  """The `first_nonfinite` record of a state that has seen no NaN/Inf."""
  return jnp.zeros((3,), jnp.int32)


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, rules: StepRules,
                     rng: jax.Array, sample_image: jax.Array) -> TrainState:
  """A fresh state. Pure: call under jit with out_shardings to create it in place.

  Args:
    rng: a raw uint32[2] key (jax.random.PRNGKey(seed)); split into init and
      training streams so the init is the same whatever the run's length.
    sample_image: one batch of the input shape (its values are not used).
  """
  init_rng, train_rng = jax.random.split(rng)
  params_rng, dropout_rng = jax.random.split(init_rng)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, sample_image, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  ema_params = jax.tree_util.tree_map(jnp.copy, params) if rules.ema_decay > 0 else None
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=ema_params,
      rng=train_rng,
      lr_control=rules.lr_control.init(),
      first_nonfinite=no_nonfinite(),
      apply_fn=model.apply,
      tx=tx,
      rules=rules)
