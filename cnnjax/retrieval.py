"""Exact k-nearest-neighbour retrieval by Euclidean distance, on device.

The lecture's use of a CNN's last hidden layer: images whose 4096-d AlexNet
embeddings lie close in Euclidean distance look alike. `nearest_neighbours`
finds, for every query vector, its k closest gallery vectors, exactly.

How it stays exact and fast:

1. *Candidates by matrix multiply.* Squared distances are expanded as
   ||q||^2 - 2 q.g + ||g||^2, one matmul per (query chunk, gallery chunk),
   at full float32 precision (`Precision.HIGHEST`: accelerators default to
   TF32/bfloat16 passes). Both sides are first centred on the gallery mean,
   which leaves distances unchanged but shrinks the norms, and so the
   cancellation error of the expansion. A running top-`k + margin` over the
   gallery chunks keeps the candidates.
2. *Exact re-rank.* The candidates' distances are recomputed from direct
   differences sum((q - g)^2), and sorted by (distance, gallery index): ties
   go to the lower gallery index, as a stable sort of the full distance row.
3. *Certificate.* The expansion's rounding error is bounded per query by
   (D + 3) eps (||q|| + max ||g||)^2. If the smallest expanded distance left
   out, minus that bound, still exceeds the k-th exact distance, no point
   left out can belong to the answer. Queries that fail this test (many
   near-ties, duplicated gallery points) are searched again by brute force
   with direct differences over the whole gallery, so every answer is exact.

The gallery is padded to whole chunks and scanned with `lax.scan` inside one
jitted function; queries are fed in fixed-size chunks (one compilation),
sharded over the devices of a 1-D 'data' mesh, the gallery replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import DataError
from cnnjax import sharding

# Extra candidates beyond k kept from the expanded distances, so that near-ties
# around the k-th neighbour are re-ranked exactly rather than certified away.
DEFAULT_CANDIDATE_MARGIN = 16
# Elements of the [queries, gallery, D] difference tensor one brute-force step may hold.
_DIRECT_DIFFERENCE_BUDGET = 1 << 24
# Elements of the gathered [queries, candidates, D] tensor of the re-rank.
_RERANK_BUDGET = 1 << 26


def nearest_neighbours(
    queries: Any,
    gallery: Any,
    k: int,
    *,
    gallery_chunk_size: int = 4096,
    query_chunk_size: int = 1024,
    candidate_margin: int = DEFAULT_CANDIDATE_MARGIN,
    squared: bool = False,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Each query's k nearest gallery vectors by Euclidean distance, exactly.

  Args:
    queries: [Q, D] array (numpy or jax), any float dtype (computed in float32).
    gallery: [G, D] array with the same D.
    k: neighbours per query, 1 <= k <= G.
    gallery_chunk_size: gallery rows per matmul step (bounds device memory at
      query_chunk_size x gallery_chunk_size distances).
    query_chunk_size: queries per jitted call, rounded up to a multiple of the
      device count; the last chunk is padded, so one compilation serves all.
    candidate_margin: candidates kept beyond k before the exact re-rank.
    squared: return squared distances instead of distances.
    devices: devices to shard the queries over (default: all local devices).

  Returns:
    (distances [Q, k] float32, indices [Q, k] int64), nearest first; equal
    distances are ordered by gallery index.

  Raises:
    DataError: shapes disagree, k is out of range, or inputs are not finite.
  """
  queries, gallery = _checked_search(queries, gallery, k, gallery_chunk_size, query_chunk_size,
                                     candidate_margin)
  num_queries, dim = queries.shape
  gallery_size = gallery.shape[0]
  if num_queries == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

  # The vectors are this process's numpy arrays: a mesh of its own devices.
  devices = list(devices) if devices is not None else jax.local_devices()
  mesh = sharding.make_mesh(devices)
  replicated, by_query = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  # Centring on the gallery mean leaves every distance unchanged and reduces
  # the norms that the expansion's rounding error scales with.
  centre = gallery.astype(np.float64).mean(axis=0).astype(np.float32)
  gallery = gallery - centre
  queries = queries - centre

  gallery_chunk_size = min(gallery_chunk_size, gallery_size)
  padded_gallery = _pad_rows(gallery, -(-gallery_size // gallery_chunk_size) * gallery_chunk_size)
  gallery_on_device = jax.device_put(padded_gallery, replicated)
  max_gallery_norm = float(np.sqrt((gallery.astype(np.float64) ** 2).sum(axis=1).max()))

  num_candidates = min(gallery_size, k + candidate_margin)
  search = _candidate_search(gallery_size, gallery_chunk_size, num_candidates, k, dim)

  query_chunk_size = min(query_chunk_size, num_queries,
                         max(1, _RERANK_BUDGET // (num_candidates * dim)))
  query_chunk_size = _round_up(query_chunk_size, len(devices))
  distances, indices, uncertified = _search_in_chunks(
      search, queries, query_chunk_size, k, by_query, gallery_on_device, max_gallery_norm)
  if uncertified:
    rows = np.asarray(uncertified)
    exact_distances, exact_indices = _brute_force(
        queries[rows], padded_gallery, gallery_size, k, devices)
    distances[rows] = exact_distances
    indices[rows] = exact_indices

  if not squared:
    distances = np.sqrt(distances)
  return distances, indices


def _checked_search(queries: Any, gallery: Any, k: int, gallery_chunk_size: int,
                    query_chunk_size: int, candidate_margin: int) -> tuple[np.ndarray, np.ndarray]:
  """(queries, gallery) as float32 matrices; DataError for any argument out of range."""
  queries = _as_matrix(queries, "queries")
  gallery = _as_matrix(gallery, "gallery")
  dim, gallery_size = queries.shape[1], gallery.shape[0]
  if gallery.shape[1] != dim:
    raise DataError(
        f"queries have dimension {dim} but gallery vectors have dimension {gallery.shape[1]}; "
        "embed both with the same model and layer.")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise DataError(f"k must be a positive integer, got {k!r}.")
  if k > gallery_size:
    raise DataError(
        f"k={k} neighbours requested but the gallery holds only {gallery_size} vectors; "
        f"use k <= {gallery_size} or a larger gallery.")
  for name, value in (("gallery_chunk_size", gallery_chunk_size),
                      ("query_chunk_size", query_chunk_size)):
    if value < 1:
      raise DataError(f"{name} must be positive, got {value}.")
  if candidate_margin < 0:
    raise DataError(f"candidate_margin must be >= 0, got {candidate_margin}.")
  return queries, gallery


def _search_in_chunks(search, queries: np.ndarray, query_chunk_size: int, k: int, by_query,
                      gallery_on_device, max_gallery_norm: float):
  """(distances [Q, k], indices [Q, k], rows whose candidates were not certified exact)."""
  num_queries = queries.shape[0]
  distances = np.empty((num_queries, k), np.float32)
  indices = np.empty((num_queries, k), np.int64)
  uncertified = []
  for start in range(0, num_queries, query_chunk_size):
    chunk = queries[start:start + query_chunk_size]
    valid = chunk.shape[0]
    chunk = _pad_rows(chunk, query_chunk_size)
    chunk_distances, chunk_indices, certified = search(
        jax.device_put(chunk, by_query), gallery_on_device, np.float32(max_gallery_norm))
    distances[start:start + valid] = np.asarray(chunk_distances)[:valid]
    indices[start:start + valid] = np.asarray(chunk_indices)[:valid]
    uncertified.extend(start + np.flatnonzero(~np.asarray(certified)[:valid]))
  return distances, indices, uncertified


def neighbour_label_agreement(query_labels: Any, gallery_labels: Any,
                              indices: np.ndarray) -> np.ndarray:
  """Fraction of each query's neighbours sharing its label: [Q] in [0, 1].

  The mean over queries is the precision@k of retrieval by label; k-NN
  classification takes the majority label of the same neighbours.
  """
  query_labels = np.asarray(query_labels)
  gallery_labels = np.asarray(gallery_labels)
  if query_labels.shape[0] != indices.shape[0]:
    raise DataError(
        f"{query_labels.shape[0]} query labels for {indices.shape[0]} rows of neighbour indices.")
  return (gallery_labels[indices] == query_labels[:, None]).mean(axis=1)


def plot_neighbours(
    query_images: Any,
    gallery_images: Any,
    indices: np.ndarray,
    *,
    distances: np.ndarray | None = None,
    query_labels: Any = None,
    gallery_labels: Any = None,
    class_names: Sequence[str] | None = None,
    max_queries: int = 8,
    image_size_inches: float = 1.4,
):
  """A picture grid: one row per query, the query first, then its neighbours.

  Images are [N, H, W, C] (or [N, H, W]) arrays in any range; each is
  min-max scaled for display, so mean-subtracted network inputs show as
  pictures. Neighbours are titled with their distance and label, and framed
  green when their label matches the query's, red otherwise.

  Returns the matplotlib Figure (nothing is shown or saved here).
  """
  try:
    import matplotlib.pyplot as plt  # Plotting is optional: imported on use.
  except ImportError as error:
    raise ImportError("plot_neighbours draws with matplotlib, which is not installed: "
                      "pip install 'cnnjax[notebooks]' (or matplotlib).") from error

  indices = np.asarray(indices)
  num_rows = min(max_queries, indices.shape[0])
  k = indices.shape[1]
  figure, axes = plt.subplots(
      num_rows, k + 1, squeeze=False,
      figsize=(image_size_inches * (k + 1), image_size_inches * num_rows * 1.15))

  def label_text(labels, i):
    if labels is None:
      return ""
    label = int(np.asarray(labels)[i])
    return class_names[label] if class_names is not None else str(label)

  for row in range(num_rows):
    _show(axes[row, 0], query_images[row], f"query {label_text(query_labels, row)}".strip())
    for column, neighbour in enumerate(indices[row], start=1):
      title = label_text(gallery_labels, neighbour)
      if distances is not None:
        title = f"{distances[row, column - 1]:.3g} {title}".strip()
      axis = axes[row, column]
      _show(axis, gallery_images[neighbour], title)
      if query_labels is not None and gallery_labels is not None:
        same = np.asarray(gallery_labels)[neighbour] == np.asarray(query_labels)[row]
        for spine in axis.spines.values():
          spine.set_visible(True)
          spine.set_edgecolor("tab:green" if same else "tab:red")
          spine.set_linewidth(2.5)
  figure.tight_layout()
  return figure


def _show(axis, image, title: str) -> None:
  image = np.asarray(image, np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  low, high = float(image.min()), float(image.max())
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
  axis.set_title(title, fontsize=7)
  axis.set_xticks([])
  axis.set_yticks([])
  for spine in axis.spines.values():
    spine.set_visible(False)


def _as_matrix(array: Any, name: str) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim != 2:
    raise DataError(f"{name} must be a [N, D] matrix of vectors, got shape {array.shape}.")
  if not np.issubdtype(array.dtype, np.number):
    raise DataError(f"{name} must be numeric, got dtype {array.dtype}.")
  array = array.astype(np.float32)
  if not np.isfinite(array).all():
    raise DataError(f"{name} contains NaN or Inf; distances to them are undefined.")
  return array


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
  if array.shape[0] == rows:
    return array
  padded = np.zeros((rows,) + array.shape[1:], array.dtype)
  padded[:array.shape[0]] = array
  return padded


def _merge_smallest(best_distances, best_indices, new_distances, new_indices, count):
  """The `count` smallest of two (distance, index) sets, ties to the lower index.

  `best_*` hold only indices below every index in `new_*` (chunks are scanned
  in order) and are themselves ordered, so `lax.top_k`'s lower-position-first
  rule on ties is the lower-gallery-index rule.
  """
  distances = jnp.concatenate([best_distances, new_distances], axis=1)
  indices = jnp.concatenate([best_indices, new_indices], axis=1)
  negated, position = jax.lax.top_k(-distances, count)
  return -negated, jnp.take_along_axis(indices, position, axis=1)


def _scan_gallery(queries, gallery, gallery_size, chunk_size, count, distance_fn):
  """Running `count` smallest distances over the gallery, chunk by chunk."""
  num_chunks = gallery.shape[0] // chunk_size
  chunks = gallery.reshape(num_chunks, chunk_size, gallery.shape[1])
  rows = queries.shape[0]

  def step(carry, chunk_and_offset):
    chunk, offset = chunk_and_offset
    distances = distance_fn(queries, chunk)
    indices = offset + jnp.arange(chunk_size, dtype=jnp.int32)
    distances = jnp.where(indices < gallery_size, distances, jnp.inf)
    indices = jnp.broadcast_to(indices, (rows, chunk_size))
    return _merge_smallest(*carry, distances, indices, count), None

  initial = (jnp.full((rows, count), jnp.inf, jnp.float32),
             jnp.full((rows, count), jnp.iinfo(jnp.int32).max, jnp.int32))
  offsets = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  (distances, indices), _ = jax.lax.scan(step, initial, (chunks, offsets))
  return distances, indices


def _expanded_squared_distances(queries, chunk):
  query_norms = jnp.sum(queries * queries, axis=1)
  chunk_norms = jnp.sum(chunk * chunk, axis=1)
  cross = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
  return query_norms[:, None] - 2.0 * cross + chunk_norms[None, :]


def _direct_squared_distances(queries, chunk):
  differences = queries[:, None, :] - chunk[None, :, :]
  return jnp.sum(differences * differences, axis=-1)


def _sort_by_distance_then_index(distances, indices):
  by_index = jnp.argsort(indices, axis=1)
  distances = jnp.take_along_axis(distances, by_index, axis=1)
  indices = jnp.take_along_axis(indices, by_index, axis=1)
  order = jnp.argsort(distances, axis=1, stable=True)
  return (jnp.take_along_axis(distances, order, axis=1),
          jnp.take_along_axis(indices, order, axis=1))


@functools.lru_cache(maxsize=32)
def _candidate_search(gallery_size: int, chunk_size: int, num_candidates: int, k: int, dim: int):
  """Jitted: expanded-distance candidates, exact re-rank, certificate."""
  # Worst-case rounding of the expansion in float32: each of ||q||^2, q.g and
  # ||g||^2 is a D-term sum (error <= D eps times its magnitude), plus the
  # two additions; |q.g| <= ||q|| ||g||, so all is <= (D+3) eps (||q||+||g||)^2.
  rounding = (dim + 3) * float(np.finfo(np.float32).eps)

  @jax.jit
  def search(queries, gallery, max_gallery_norm):
    candidate_distances, candidates = _scan_gallery(
        queries, gallery, gallery_size, chunk_size, num_candidates, _expanded_squared_distances)
    candidate_vectors = gallery[candidates]  # [rows, num_candidates, D]
    exact = jnp.sum((queries[:, None, :] - candidate_vectors) ** 2, axis=-1)
    exact, candidates = _sort_by_distance_then_index(exact, candidates)
    distances, indices = exact[:, :k], candidates[:, :k]
    if num_candidates == gallery_size:
      certified = jnp.ones(queries.shape[0], bool)
    else:
      query_norms = jnp.sqrt(jnp.sum(queries * queries, axis=1))
      bound = rounding * (query_norms + max_gallery_norm) ** 2
      # Every gallery point left out has an expanded distance >= the largest
      # kept one; its true distance is at least that minus the bound.
      smallest_left_out = candidate_distances[:, -1] - bound
      kth_exact = distances[:, -1] * (1 + rounding)
      certified = smallest_left_out > kth_exact
    return distances, indices, certified

  return search


def _brute_force(queries, padded_gallery, gallery_size, k, devices):
  """Direct-difference search over the whole gallery (the exact fallback)."""
  dim = queries.shape[1]
  rows = _round_up(min(queries.shape[0], 64), len(devices))
  chunk_size = max(1, min(gallery_size, _DIRECT_DIFFERENCE_BUDGET // (rows * dim)))
  num_chunks = -(-gallery_size // chunk_size)
  gallery = _pad_rows(padded_gallery[:gallery_size], num_chunks * chunk_size)
  mesh = sharding.make_mesh(devices)
  gallery = jax.device_put(gallery, sharding.replicated(mesh))
  by_query = sharding.batch_sharded(mesh)
  search = _brute_force_search(gallery_size, chunk_size, k)
  distances = np.empty((queries.shape[0], k), np.float32)
  indices = np.empty((queries.shape[0], k), np.int64)
  for start in range(0, queries.shape[0], rows):
    chunk = queries[start:start + rows]
    valid = chunk.shape[0]
    chunk_distances, chunk_indices = search(jax.device_put(_pad_rows(chunk, rows), by_query), gallery)
    distances[start:start + valid] = np.asarray(chunk_distances)[:valid]
    indices[start:start + valid] = np.asarray(chunk_indices)[:valid]
  return distances, indices


@functools.lru_cache(maxsize=32)
def _brute_force_search(gallery_size: int, chunk_size: int, k: int):

  @jax.jit
  def search(queries, gallery):
    return _scan_gallery(queries, gallery, gallery_size, chunk_size, k, _direct_squared_distances)

  return search


def brute_force_nearest_neighbours(queries: Any, gallery: Any, k: int, *,
                                   squared: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The slow exact search alone (direct differences), for checks and tiny galleries."""
  queries = _as_matrix(queries, "queries")
  gallery = _as_matrix(gallery, "gallery")
  if k > gallery.shape[0]:
    raise DataError(
        f"k={k} neighbours requested but the gallery holds only {gallery.shape[0]} vectors; "
        f"use k <= {gallery.shape[0]} or a larger gallery.")
  distances, indices = _brute_force(queries, gallery, gallery.shape[0], k, jax.local_devices())
  return (distances if squared else np.sqrt(distances)), indices


__all__ = [
    "nearest_neighbours",
    "brute_force_nearest_neighbours",
    "neighbour_label_agreement",
    "plot_neighbours",
    "DEFAULT_CANDIDATE_MARGIN",
]
