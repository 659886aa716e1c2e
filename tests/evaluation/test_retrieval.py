"""Exact k-NN retrieval against a float64 numpy brute force and known answers."""

import numpy as np
import pytest

from cnnjax import retrieval
from cnnjax.errors import CnnjaxError, DataError


def numpy_reference(queries, gallery, k):
  """Brute force in float64, stable sort: ties to the lower gallery index."""
  queries = np.asarray(queries, np.float32).astype(np.float64)
  gallery = np.asarray(gallery, np.float32).astype(np.float64)
  squared = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
  order = np.argsort(squared, axis=1, kind="stable")[:, :k]
  return np.sqrt(np.take_along_axis(squared, order, axis=1)), order, squared


def assert_matches_reference(queries, gallery, k, distances, indices):
  want_distances, want_indices, squared = numpy_reference(queries, gallery, k)
  assert distances.shape == indices.shape == (len(queries), k)
  np.testing.assert_allclose(distances, want_distances, rtol=2e-5, atol=1e-5)
  # Indices agree except where two true distances are equal to float32
  # resolution, in which case either order is a correct answer.
  differ = indices != want_indices
  if differ.any():
    rows, columns = np.nonzero(differ)
    got = squared[rows, indices[rows, columns]]
    want = squared[rows, want_indices[rows, columns]]
    np.testing.assert_allclose(got, want, rtol=1e-6)
  # Every row is a set of distinct gallery points.
  assert all(len(set(row)) == k for row in indices.tolist())


@pytest.mark.parametrize("k", [1, 10, 37])
@pytest.mark.parametrize("gallery_chunk_size,query_chunk_size", [(7, 5), (64, 16), (4096, 1024)])
def test_matches_numpy_brute_force(k, gallery_chunk_size, query_chunk_size):
  rng = np.random.default_rng(k * 1000 + gallery_chunk_size)
  queries = rng.normal(size=(23, 12)).astype(np.float32)
  gallery = rng.normal(size=(150, 12)).astype(np.float32)
  distances, indices = retrieval.nearest_neighbours(
      queries, gallery, k, gallery_chunk_size=gallery_chunk_size, query_chunk_size=query_chunk_size)
  assert_matches_reference(queries, gallery, k, distances, indices)
  assert distances.dtype == np.float32 and indices.dtype == np.int64


def test_k_equal_to_gallery_size_sorts_everything():
  rng = np.random.default_rng(1)
  queries = rng.normal(size=(4, 3))
  gallery = rng.normal(size=(9, 3))
  distances, indices = retrieval.nearest_neighbours(queries, gallery, 9, gallery_chunk_size=4)
  assert_matches_reference(queries, gallery, 9, distances, indices)


def test_squared_option_returns_squared_distances():
  rng = np.random.default_rng(2)
  queries, gallery = rng.normal(size=(5, 4)), rng.normal(size=(20, 4))
  plain, _ = retrieval.nearest_neighbours(queries, gallery, 3)
  squared, _ = retrieval.nearest_neighbours(queries, gallery, 3, squared=True)
  np.testing.assert_allclose(squared, plain ** 2, rtol=1e-5)


def test_gallery_of_noisy_queries_finds_each_query_itself():
  rng = np.random.default_rng(3)
  queries = rng.normal(size=(200, 64)).astype(np.float32)
  gallery = queries + rng.normal(scale=1e-3, size=queries.shape).astype(np.float32)
  permutation = rng.permutation(len(gallery))
  distances, indices = retrieval.nearest_neighbours(queries, gallery[permutation], 1,
                                                    gallery_chunk_size=37)
  np.testing.assert_array_equal(permutation[indices[:, 0]], np.arange(200))
  assert distances.max() < 0.05


def test_clustered_data_neighbours_share_the_label():
  rng = np.random.default_rng(4)
  centres = rng.normal(scale=10.0, size=(6, 32))
  labels = rng.integers(0, 6, size=300)
  points = centres[labels] + rng.normal(size=(300, 32))
  queries, query_labels = points[:60], labels[:60]
  gallery, gallery_labels = points[60:], labels[60:]
  _, indices = retrieval.nearest_neighbours(queries, gallery, 5, gallery_chunk_size=50)
  agreement = retrieval.neighbour_label_agreement(query_labels, gallery_labels, indices)
  np.testing.assert_array_equal(agreement, 1.0)


def test_exact_ties_go_to_the_lower_gallery_index():
  # Duplicated gallery points make the expanded-distance shortcut ambiguous,
  # and far offsets make its rounding error large: the certificate must send
  # these queries to the direct-difference search.
  rng = np.random.default_rng(5)
  base = rng.normal(size=(10, 8)).astype(np.float32) + 1000.0
  gallery = np.concatenate([base] * 5)  # each point 5 times, at i, i+10, ...
  queries = base[:4] + np.float32(1e-3)
  distances, indices = retrieval.nearest_neighbours(queries, gallery, 7, candidate_margin=0,
                                                    gallery_chunk_size=16)
  for row in range(4):
    np.testing.assert_array_equal(indices[row, :5], row + 10 * np.arange(5))
    assert len(set(distances[row, :5].tolist())) == 1
  assert_matches_reference(queries, gallery, 7, distances, indices)


def test_large_offset_data_stays_exact():
  # Far from the origin, ||q||^2 - 2 q.g + ||g||^2 cancels catastrophically in
  # float32 without centring; the answer must still match the reference.
  rng = np.random.default_rng(6)
  offset = np.float32(3e3)
  gallery = rng.normal(size=(300, 16)).astype(np.float32) + offset
  queries = rng.normal(size=(40, 16)).astype(np.float32) + offset
  distances, indices = retrieval.nearest_neighbours(queries, gallery, 5, gallery_chunk_size=64)
  assert_matches_reference(queries, gallery, 5, distances, indices)


def test_brute_force_matches_reference():
  rng = np.random.default_rng(7)
  queries, gallery = rng.normal(size=(9, 5)), rng.normal(size=(40, 5))
  distances, indices = retrieval.brute_force_nearest_neighbours(queries, gallery, 6)
  assert_matches_reference(queries, gallery, 6, distances, indices)


def test_k_larger_than_gallery_names_both():
  with pytest.raises(DataError, match=r"k=11.*only 10") as error:
    retrieval.nearest_neighbours(np.zeros((2, 3)), np.zeros((10, 3)), 11)
  assert isinstance(error.value, CnnjaxError)


@pytest.mark.parametrize("queries,gallery,k,message", [
    (np.zeros((2, 3)), np.zeros((5, 4)), 1, "dimension 3.*dimension 4"),
    (np.zeros((2, 3)), np.zeros((5, 3)), 0, "positive integer"),
    (np.zeros(3), np.zeros((5, 3)), 1, r"\[N, D\]"),
    (np.full((2, 3), np.nan), np.zeros((5, 3)), 1, "NaN"),
])
def test_bad_inputs_are_named(queries, gallery, k, message):
  with pytest.raises(DataError, match=message):
    retrieval.nearest_neighbours(queries, gallery, k)


def test_no_queries_gives_empty_result():
  distances, indices = retrieval.nearest_neighbours(np.zeros((0, 3)), np.ones((4, 3)), 2)
  assert distances.shape == indices.shape == (0, 2)


def test_plot_neighbours_draws_one_row_per_query():
  import matplotlib
  matplotlib.use("Agg")
  rng = np.random.default_rng(8)
  images = rng.normal(size=(12, 8, 8, 3))
  labels = np.arange(12) % 3
  distances, indices = retrieval.nearest_neighbours(images.reshape(12, -1), images.reshape(12, -1), 4)
  figure = retrieval.plot_neighbours(images[:3], images, indices[:3], distances=distances[:3],
                                     query_labels=labels[:3], gallery_labels=labels)
  axes = figure.get_axes()
  assert len(axes) == 3 * 5
  # The first neighbour of each query is itself, at distance 0, same label.
  assert axes[1].get_title().startswith("0 ")
  assert axes[1].spines["left"].get_edgecolor()[:3] == matplotlib.colors.to_rgb("tab:green")
  import matplotlib.pyplot as plt
  plt.close(figure)
