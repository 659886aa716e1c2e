"""Embeddings: every real example once, in order, with its label; then retrieval on them."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import mean_colour_member

from cnnjax import embed, retrieval
from cnnjax.errors import DataError, ModelError


def padded_batches(seed: int = 0):
  rng = np.random.default_rng(seed)
  batches = []
  for index in range(3):
    images = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 7, size=4).astype(np.int32)
    mask = np.array([True, True, True, index < 2])  # last row of the last batch is padding
    batches.append({"image": images, "label": labels, "mask": mask})
  return batches


def test_embeddings_are_the_pre_logits_of_real_examples_in_order():
  model, variables = mean_colour_member(0)
  batches = padded_batches()
  embeddings, labels = embed.embed(model, variables, batches)
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  want_labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert embeddings.shape == (11, 3) and embeddings.dtype == np.float32
  np.testing.assert_allclose(embeddings, images.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(labels, want_labels)


def test_unknown_feature_and_bad_batches_are_named():
  model, variables = mean_colour_member(0)
  with pytest.raises(ModelError, match="'stage9'.*pre_logits"):
    embed.embed(model, variables, padded_batches(), feature="stage9")
  with pytest.raises(DataError, match=r"\[N, H, W, 3\]"):
    embed.embed(model, variables, [{"label": np.zeros(4)}])
  with pytest.raises(DataError, match="view='center'"):
    embed.embed(model, variables, [{"image": np.zeros((4, 2, 5, 5, 3)), "label": np.zeros(4),
                                    "mask": np.ones(4, bool)}])


def test_plain_arrays_and_unlabelled_batches_embed():
  model, variables = mean_colour_member(0)
  images = np.random.default_rng(1).normal(size=(7, 5, 5, 3)).astype(np.float32)
  want = images.mean(axis=(1, 2))
  embeddings, labels = embed.embed(model, variables, images, batch_size=3)  # 3 + 3 + 1 padded
  assert labels is None and embeddings.shape == (7, 3)
  np.testing.assert_allclose(embeddings, want, rtol=1e-5, atol=1e-6)
  embeddings, labels = embed.embed(model, variables, [{"image": images[:4]}, {"image": images[4:]}])
  assert labels is None
  np.testing.assert_allclose(embeddings, want, rtol=1e-5, atol=1e-6)
  _, labels = embed.embed(model, variables, [{"image": images, "label": np.arange(7)}])
  np.testing.assert_array_equal(labels, np.arange(7))


def test_plotting_without_matplotlib_names_the_extra(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
  with pytest.raises(ImportError, match=r"cnnjax\[notebooks\]"):
    retrieval.plot_neighbours(np.zeros((1, 4, 4, 3)), np.zeros((2, 4, 4, 3)), np.array([[0, 1]]))


def test_workdir_embeddings_cover_the_split_and_feed_retrieval(trained_workdir, digits_dir,
                                                               tmp_path):
  import cnnjax.data
  embeddings, labels = embed.embed_workdir(trained_workdir, split="test", batch_size=128,
                                           progress=False)
  assert embeddings.shape[0] == 300 and embeddings.ndim == 2
  want = np.concatenate([b["label"][b["mask"]] for b in cnnjax.data.eval_iterator(
      "digits", data_dir=digits_dir, split="test", global_batch_size=128, image_size=16)])
  np.testing.assert_array_equal(labels, want)
  distances, indices = retrieval.nearest_neighbours(embeddings, embeddings, k=3)
  # Each image's nearest neighbour is itself (or an exact duplicate embedding).
  assert np.all(distances[:, 0] <= 1e-3 * (1 + np.abs(embeddings).max()))

  output = tmp_path / "test.npz"
  assert embed.main(["--workdir", trained_workdir, "--split", "test",
                     "--output", str(output)]) == 0
  saved = np.load(output)
  np.testing.assert_allclose(saved["embeddings"], embeddings, rtol=1e-6)
  np.testing.assert_array_equal(saved["labels"], labels)
