"""Dense evaluation sees the whole image (VGG Sec. 3.2, ResNet Sec. 4).

The net runs over the whole image rescaled to shorter side Q (no centre
square), and the class scores are the spatial average of its score map;
images of different shapes are scored one at a time, so no padding enters
that average.
"""

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


@pytest.fixture(scope="module")
def landscape_folder(tmp_path_factory):
  """val/ and train/ of 300x450 PNGs (lossless) in 2 classes; one portrait image."""
  root = str(tmp_path_factory.mktemp("landscape"))
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for label in ("a", "b"):
      for i in range(2):
        shape = (450, 300, 3) if (split, label, i) == ("val", "b", 1) else (300, 450, 3)
        write_image(os.path.join(root, split, label, f"{i}.png"),
               rng.integers(0, 256, shape, dtype=np.uint8))
  return root


def test_q256_view_carries_the_whole_256x384_image():
  image = np.random.default_rng(1).integers(0, 256, (300, 450, 3), dtype=np.uint8)
  op = views.whole_image_op([256, 384], IDENTITY)
  out = op({"image": tf.constant(image), "label": tf.constant(0)})
  assert out["image_q256"].shape == (2, 256, 384, 3)
  assert out["image_q384"].shape == (2, 384, 576, 3)
  want = tf.image.resize(tf.cast(image, tf.float32), (256, 384), antialias=True).numpy()
  # The whole image: its left and right thirds are there, not only a centre 256 square.
  got = out["image_q256"].numpy()
  np.testing.assert_allclose(got[0], want, atol=2.0)
  np.testing.assert_array_equal(got[1], got[0][:, ::-1])


def test_whole_image_batches_hold_each_image_at_its_own_shape(landscape_folder, tmp_path):
  batches = list(views.whole_image_batches("image_folder:" + landscape_folder, scales=[64],
                                           rows=2, data_dir=str(tmp_path), split="val",
                                           normalize="none"))
  assert len(batches) == 4
  shapes = sorted(b["image_q64"].shape for b in batches)
  assert shapes == [(2, 2, 64, 96, 3)] * 3 + [(2, 2, 96, 64, 3)]
  for batch in batches:
    np.testing.assert_array_equal(batch["mask"], [True, False])


def test_vgg_dense_logits_are_the_mean_of_the_score_map_of_the_image_alone():
  from cnnjax import models
  from cnnjax.evaluate import model_for_view
  model = models.create("vgg_a", num_classes=5, width_multiplier=1 / 16, fc_features=32)
  dense = model_for_view(model, "dense_multiscale")
  image = jax.random.normal(jax.random.PRNGKey(0), (1, 256, 320, 3))
  variables = dense.init(jax.random.PRNGKey(1), image, train=False)
  logits, feats = dense.apply(variables, image, train=False, features=True)
  fc8 = variables["params"]["fc8"]
  score_map = feats["fc7"] @ fc8["kernel"] + fc8["bias"]            # [1, h, w, classes]
  assert score_map.shape[1:3] == (2, 4)  # (256/32 - 7 + 1, 320/32 - 7 + 1): the whole image
  np.testing.assert_allclose(logits, score_map.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_evaluate_scores_each_whole_image_alone(landscape_folder, tmp_path):
  """evaluate's loss equals the per-image dense scores computed by hand, one image at a time."""
  from cnnjax import evaluate, models
  model = models.create("cifar_resnet20", num_classes=2, stage_sizes=(1, 1, 1),
                        width_multiplier=0.25)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  dataset = "image_folder:" + landscape_folder
  report = evaluate.evaluate([(model, variables)], dataset, view="dense_multiscale",
                             scales=[48, 64], data_dir=str(tmp_path), split="val",
                             normalize="none", progress=False)
  assert report["whole_images"] and report["num_examples"] == 4
  losses = []
  for batch in views.whole_image_batches(dataset, scales=[48, 64], data_dir=str(tmp_path),
                                         split="val", normalize="none"):
    probs = [jax.nn.softmax(model.apply(variables, batch[k][0], train=False)).mean(axis=0)
             for k in ("image_q48", "image_q64")]
    losses.append(-np.log(np.mean(probs, axis=0)[batch["label"][0]]))
  np.testing.assert_allclose(report["loss"], np.mean(losses), rtol=1e-4)
