"""Scoring evaluation batches: the one path of the loop's validation and of cnnjax.evaluate.

`VIEWS` names the test-time views; `predict_views` gives one model's posteriors
for a batch of any of them, and `check_layout` names a batch read for another view.
A batch holds one image per example ([B, H, W, 3]), several views of it
([B, V, H, W, 3]: 10 crops, 144 crops) or, for dense multi-scale testing,
one key "image_q<Q>" per scale Q of [B, 2, Hq, Wq, 3] (the image and its
mirror), with "image" [B, V, H, W, 3] too for dense + multi-crop (VGG
Table 5: the two methods' posteriors averaged with equal weight). `view_scores` turns any of them into one row of class scores per
example: the logits of a single view, or the log of the softmax averaged
over the views (the papers average posteriors, not logits). `error_sums`
turns scores into (sum, count) pairs over the real examples of a padded,
masked batch, and `sum_over_batches` is the one evaluation loop: global
batches through a jitted step, the sums added on the devices and fetched
once at the end. Needs only jax (and cnnjax.sharding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from cnnjax import sharding
from cnnjax.errors import ConfigError, DataError, close_matches
from cnnjax.scoring import losses
from cnnjax.scoring import metrics as metrics_lib

DENSE_KEY_PREFIX = "image_q"
# The test-time views cnnjax scores.
VIEWS = ("center", "10crop", "dense_multiscale", "144crop", "150crop", "dense+150crop")
# Names of the same views in cnnjax.data.eval_iterator ("dense+150crop" reads
# whole images one at a time: cnnjax.data.views.whole_image_batches).
DATA_VIEWS = {"center": "center", "10crop": "10crop", "dense_multiscale": "dense_multiscale",
              "144crop": "144crop", "150crop": "150crop", "dense+150crop": "dense_multiscale"}
DENSE_VIEWS = ("dense_multiscale", "dense+150crop")


def dense_keys(batch: Mapping[str, Any]) -> list[str]:
  """The per-scale image keys of a dense batch, smallest scale first."""
  keys = [key for key in batch if key.startswith(DENSE_KEY_PREFIX)]
  return sorted(keys, key=lambda key: int(key[len(DENSE_KEY_PREFIX):]))


def _mean_posteriors(apply_fn: Callable, variables: Any, images: jax.Array) -> jax.Array:
  """[B, V, H, W, 3] -> softmax averaged over the V views: [B, classes]."""
  batch, views = images.shape[:2]
  logits = apply_fn(variables, images.reshape((batch * views,) + images.shape[2:]), train=False)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probs.reshape(batch, views, -1).mean(axis=1)


def log_of(probs: jax.Array) -> jax.Array:
  """log(probs), finite where a posterior underflowed to 0."""
  return jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))


def view_scores(apply_fn: Callable, variables: Any, batch: Mapping[str, Any], *,
                device_input: Any = None) -> jax.Array:
  """Class scores [B, classes] of a batch of any view (see the module docstring).

  `device_input` (a `cnnjax.preprocessing.device.DeviceInput`) first makes the
  batch's uint8 images network input (normalisation on the device); None:
  the images arrive ready.
  """
  if device_input is not None:
    batch = device_input.eval_batch(batch)
  keys = dense_keys(batch)
  if keys:
    per_scale = [_mean_posteriors(apply_fn, variables, batch[key]) for key in keys]
    dense = jnp.mean(jnp.stack(per_scale), axis=0)
    if "image" in batch:  # VGG Table 5: dense and multi-crop, their posteriors averaged
      return log_of((dense + _mean_posteriors(apply_fn, variables, batch["image"])) / 2)
    return log_of(dense)
  if "image" not in batch:
    raise DataError(f"an evaluation batch needs 'image' or 'image_q<Q>' keys; got {sorted(batch)}")
  images = batch["image"]
  if images.ndim == 5:
    return log_of(_mean_posteriors(apply_fn, variables, images))
  if images.ndim != 4:
    raise DataError(f"evaluation images are [B, H, W, 3] or [B, views, H, W, 3]; got shape "
                    f"{images.shape}")
  return apply_fn(variables, images, train=False).astype(jnp.float32)


def ensemble_scores(scores: list[jax.Array]) -> jax.Array:
  """One row of scores per example from several models': their posteriors averaged."""
  probs = [jax.nn.softmax(s.astype(jnp.float32), axis=-1) for s in scores]
  return log_of(jnp.mean(jnp.stack(probs), axis=0))


def error_sums(scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
               loss: str = "categorical_cross_entropy") -> dict[str, jax.Array]:
  """Summed loss, top-1 and top-5 mistakes and the count of real examples."""
  per_example = losses.classification_loss(scores, labels, loss=loss)
  return metrics_lib.error_sums(scores, labels, per_example, mask)


def sum_over_batches(step: Callable[[dict[str, jax.Array]], Any],
                     batches: Iterable[Mapping[str, Any]], mesh, *,
                     what: str = "the evaluation data") -> Any:
  """Adds `step(global batch)`'s sums over every batch, on the devices; fetches them once.

  `batches` yield this process's rows (padded, with a "mask"); the result is
  the host copy of the summed tree.
  """
  total = None
  for local in batches:
    if "mask" not in local:
      raise DataError("evaluation batches need a 'mask' of real examples (eval_iterator "
                      "provides one); without it padding would be counted.")
    sums = step(sharding.global_batch(local, mesh))
    total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
  if total is None:
    raise DataError(f"{what} yielded no batches.")
  return metrics_lib.to_host(total)


def predict_views(model: Any, variables: Any, batch: Mapping[str, Any] | Any,
                  view: str | None = None) -> jax.Array:
  """Class posteriors [B, classes] of one model, averaged over the batch's views.

  `batch` is an eval batch of cnnjax.data.eval_iterator for the matching
  data view (or, for the single-array views, the image array itself):
  "center" [B, H, W, 3]; "10crop"/"144crop" [B, V, H, W, 3];
  "dense_multiscale" keys "image_q<Q>" of [B, 2, Q, Q, 3] (image and mirror).
  Softmax first, then the mean: the papers average posteriors, not logits.
  For dense views the model should be `cnnjax.models.dense_form(model)`.
  `view`, when given, is checked against the batch's layout.
  """
  if not isinstance(batch, Mapping):
    batch = {"image": batch}
  if view is not None:
    check_layout(batch, view)
  return jax.nn.softmax(view_scores(model.apply, variables, batch), axis=-1)


def check_layout(batch: Mapping[str, Any], view: str) -> None:
  """DataError when a batch was read for another view than `view`."""
  if view not in VIEWS:
    raise ConfigError(f"unknown view {view!r}; {close_matches(view, VIEWS)}")
  dense = bool(dense_keys(batch))
  if view == "dense+150crop":
    if not dense or getattr(batch.get("image"), "ndim", None) != 5:
      raise DataError("view 'dense+150crop' takes batches with 'image_q<Q>' keys and 'image' "
                      "[B, views, H, W, 3]; read them with cnnjax.data.views.whole_image_batches "
                      "(crop_scales=...).")
    return
  if view == "dense_multiscale":
    if not dense:
      raise DataError("view 'dense_multiscale' takes batches with one 'image_q<Q>' key per "
                      "scale; read the data with eval_iterator(view='dense_multiscale').")
    return
  ndim = getattr(batch.get("image"), "ndim", None)
  expected = 4 if view == "center" else 5
  if dense or ndim != expected:
    layout = "[B, H, W, 3]" if view == "center" else "[B, views, H, W, 3]"
    shape = getattr(batch.get("image"), "shape", sorted(batch))
    raise DataError(f"view {view!r} takes images {layout}; got {shape}. Read the data with "
                    f"eval_iterator(view={DATA_VIEWS[view]!r}).")
