"""Classification metrics as (sum, count) pairs, and tree norms.

Evaluation batches are padded to a fixed shape and carry a mask; summing
per-example errors times the mask, and counting the mask, makes every real
example count exactly once however the split divides into batches and
processes. The averages are taken on the host after the sums are added up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import DataError


def topk_wrong(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Per-example 1.0 where the label is not among the k highest scores, else 0.0.

  Ties are broken by rank: the label counts as correct only if fewer than k
  classes score strictly higher. With fewer than k classes nothing is wrong.
  """
  logits = logits.astype(jnp.float32)
  label_score = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)
  higher = jnp.sum(logits > label_score, axis=-1)
  return (higher >= k).astype(jnp.float32)


def error_sums(logits: jax.Array, labels: jax.Array, per_example_loss: jax.Array,
               mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Summed loss, top-1 and top-5 mistakes, and the example count, over real examples."""
  weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(per_example_loss.astype(jnp.float32) * weights),
      "top1_wrong": jnp.sum(topk_wrong(logits, labels, 1) * weights),
      "top5_wrong": jnp.sum(topk_wrong(logits, labels, 5) * weights),
      "count": jnp.sum(weights),
  }


def add_sums(total: Mapping[str, float] | None, more: Mapping[str, float]) -> dict[str, float]:
  """Adds two dicts of host-side sums (the first may be None)."""
  more = {k: float(v) for k, v in more.items()}
  if not total:
    return more
  return {k: total[k] + more[k] for k in more}


def averages_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
  """loss, top1_error, top5_error and num_examples from summed counts."""
  sums = {k: float(v) for k, v in sums.items()}
  count = sums["count"]
  if count <= 0:
    raise DataError("no evaluation examples were counted (an empty split, or batches whose "
                    "mask is all False)")
  return {
      "loss": sums["loss_sum"] / count,
      "top1_error": sums["top1_wrong"] / count,
      "top5_error": sums["top5_wrong"] / count,
      "num_examples": int(round(count)),
  }


def global_norm(tree) -> jax.Array:
  """L2 norm over every leaf of a pytree, accumulated in float32."""
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def to_host(tree):
  """Fetches replicated (or fully addressable) arrays as numpy, on any process,
  in one `jax.device_get` (every copy started before any is waited for).

  A replicated global array of a multi-process run is not fully addressable;
  every process holds a full copy, so reading the local shard suffices.
  """
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_shards[0].data
    return x
  return jax.tree_util.tree_map(np.asarray, jax.device_get(jax.tree_util.tree_map(local, tree)))


def mean_of(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
  """Average of each key over host-side metric rows (for logging windows)."""
  rows = list(rows)
  if not rows:
    return {}
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
