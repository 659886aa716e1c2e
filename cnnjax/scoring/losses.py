"""Losses of the lecture and the papers, always computed in float32.

Each function returns one value per example so the caller decides how to
weight (padded evaluation examples get weight 0) and average. The logits of
a bfloat16 model are cast to float32 first: softmax and log-sum-exp of
bfloat16 values lose too many digits to train on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSSES = ("categorical_cross_entropy", "binary_cross_entropy", "mean_squared_error")


def one_hot_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """One-hot float32 targets, optionally smoothed: (1 - e) y + e / K."""
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
  return targets


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example 1/2 sum_k (y_k - yhat_k)^2; its batch mean is E = 1/(2N) sum (y - yhat)^2."""
  diff = targets.astype(jnp.float32) - predictions.astype(jnp.float32)
  return 0.5 * jnp.sum(jnp.square(diff), axis=-1)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example sum over classes of -[y log s(z) + (1 - y) log(1 - s(z))], s = sigmoid."""
  logits = logits.astype(jnp.float32)
  per_class = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  return jnp.sum(per_class, axis=-1)


def categorical_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example -sum_k y_k log softmax(z)_k."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def classification_loss(logits: jax.Array, labels: jax.Array, *, loss: str = "categorical_cross_entropy",
                        label_smoothing: float = 0.0) -> jax.Array:
  """Per-example loss of integer `labels` under `logits` [..., K].

  "mean_squared_error" compares the softmax probabilities with the (smoothed)
  one-hot targets, the lecture's E = 1/(2N) sum (y - yhat)^2 on a classifier's
  outputs; "binary_cross_entropy" treats every class as an independent
  sigmoid unit.
  """
  targets = one_hot_targets(labels, logits.shape[-1], label_smoothing)
  if loss == "categorical_cross_entropy":
    return categorical_cross_entropy(logits, targets)
  if loss == "binary_cross_entropy":
    return binary_cross_entropy(logits, targets)
  if loss == "mean_squared_error":
    return mean_squared_error(jax.nn.softmax(logits.astype(jnp.float32)), targets)
  raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def weighted_mean(per_example: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean over examples with weight > 0 (all examples when weights is None)."""
  if weights is None:
    return jnp.mean(per_example)
  weights = weights.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def total_training_loss(logits: jax.Array, labels: jax.Array, feats: dict | None, *, loss: str,
                        label_smoothing: float, aux_loss_weight: float) -> tuple[jax.Array, jax.Array]:
  """(total, main) batch-mean losses; GoogLeNet's auxiliary heads add aux_loss_weight each."""
  main = jnp.mean(classification_loss(logits, labels, loss=loss, label_smoothing=label_smoothing))
  total = main
  for aux_logits in (feats or {}).get("aux_logits", ()) or ():
    aux = classification_loss(aux_logits, labels, loss=loss, label_smoothing=label_smoothing)
    total = total + aux_loss_weight * jnp.mean(aux)
  return total, main
