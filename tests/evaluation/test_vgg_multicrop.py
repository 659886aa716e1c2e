"""VGG's multi-crop (150 crops) and dense + multi-crop evaluation (Sec. 3.2, Table 5)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from data_helpers import write_image

from cnnjax.data import augment, views

IDENTITY = augment.to_float()


def test_150_crops_are_a_5x5_grid_with_mirrors_at_each_scale():
  image = np.random.default_rng(2).integers(0, 256, (300, 450, 3), dtype=np.uint8)
  op = views.eval_op("150crop", image_size=224, native_size=None, normalize_op=IDENTITY)
  assert op({"image": tf.constant(image), "label": tf.constant(0)})["image"].shape == (
      150, 224, 224, 3)
  op = views.eval_op("150crop", image_size=224, native_size=None, normalize_op=IDENTITY,
                     scales=[256])
  crops = op({"image": tf.constant(image), "label": tf.constant(0)})["image"].numpy()
  assert crops.shape == (50, 224, 224, 3)
  rescaled = tf.image.resize(tf.cast(image, tf.float32), (256, 384), antialias=True).numpy()
  tops, lefts = [0, 8, 16, 24, 32], [0, 40, 80, 120, 160]  # (256 - 224) / 4, (384 - 224) / 4
  for row in range(5):
    for col in range(5):
      v = (row * 5 + col) * 2
      want = rescaled[tops[row]:tops[row] + 224, lefts[col]:lefts[col] + 224]
      np.testing.assert_allclose(crops[v], want, atol=2.0, err_msg=f"crop {row},{col}")
      np.testing.assert_array_equal(crops[v + 1], crops[v][:, ::-1])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multicrop"))
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for label in ("a", "b"):
      write_image(os.path.join(root, split, label, "0.png"),
             rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
  return root


def test_dense_plus_multi_crop_averages_the_two_posteriors(folder, tmp_path):
  from cnnjax import evaluate, models
  model = models.create("cifar_resnet20", num_classes=2, stage_sizes=(1, 1, 1),
                        width_multiplier=0.25)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  dataset = "image_folder:" + folder
  common = dict(scales=[36, 48], data_dir=str(tmp_path), split="val", normalize="none",
                image_size=32, progress=False)
  combined = evaluate.evaluate([(model, variables)], dataset, view="dense+150crop", **common)
  crops_only = evaluate.evaluate([(model, variables)], dataset, view="150crop", **common)
  assert combined["num_examples"] == crops_only["num_examples"] == 2
  losses, crop_losses = [], []
  for batch in views.whole_image_batches(dataset, scales=[36, 48], data_dir=str(tmp_path),
                                         split="val", normalize="none", crop_scales=[36, 48],
                                         image_size=32):
    assert batch["image"].shape == (1, 100, 32, 32, 3)  # 2 scales x 5 x 5 x 2
    probs = lambda x: jax.nn.softmax(model.apply(variables, x, train=False)).mean(axis=0)  # noqa: E731
    dense = np.mean([probs(batch[k][0]) for k in ("image_q36", "image_q48")], axis=0)
    crops = probs(batch["image"][0])
    label = batch["label"][0]
    losses.append(-np.log((dense[label] + crops[label]) / 2))
    crop_losses.append(-np.log(crops[label]))
  np.testing.assert_allclose(combined["loss"], np.mean(losses), rtol=1e-4)
  np.testing.assert_allclose(crops_only["loss"], np.mean(crop_losses), rtol=1e-4)
