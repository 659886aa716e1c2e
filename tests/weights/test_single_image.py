"""One image in: the weights' evaluation view is the evaluation pipeline's, to the pixel.

`Weights.view` cuts its crops with cnnjax.data.views, the code of
`cnnjax.data.eval_iterator`; on an image folder the two must agree exactly
(unnormalised) and after each side's normalisation to float rounding.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_helpers import smooth_image, write_image

import cnnjax.data
from cnnjax import classify, models, weights
from cnnjax.errors import ModelError

SOURCE = "torchvision/resnet50.IMAGENET1K_V2"  # resize 232, crop 224


def tiny_weights(source: str = SOURCE) -> weights.Weights:
  """The source's conventions on a narrow random network (the views do not depend on it)."""
  model = models.create("resnet18", width_multiplier=0.125, num_classes=1000)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  spec = weights.get_source(source)
  return weights.Weights(spec, model, variables, weights.class_names(spec, 1000))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  rng = np.random.default_rng(0)
  paths = []
  for split, label, (height, width), ext in [("train", "a", (240, 250), "jpg"),
                                             ("train", "b", (250, 240), "jpg"),
                                             ("val", "a", (300, 420), "jpg"),
                                             ("val", "b", (380, 260), "png")]:
    path = os.path.join(root, "images", split, label, f"{split}_{label}.{ext}")
    write_image(path, smooth_image(rng, height, width))
    if split == "val":
      paths.append(path)
  return str(root / "images"), str(root / "data"), paths


def pipeline_images(folder, view, view_kwargs, normalize):
  images_root, data_dir, _ = folder
  batches = cnnjax.data.eval_iterator(
      f"image_folder:{images_root}", data_dir=data_dir, split="val", global_batch_size=2,
      view=view, view_kwargs=view_kwargs, image_size=224, normalize=normalize,
      boundary="float32")
  return np.concatenate([batch["image"][batch["mask"]] for batch in batches])


@pytest.mark.parametrize("view,view_kwargs", [("center", {"resize_size": 232}),
                                              ("10crop", {"resize_size": 232})])
def test_view_equals_the_evaluation_pipelines_input(folder, view, view_kwargs):
  loaded = tiny_weights()
  from_pipeline = pipeline_images(folder, view, view_kwargs, "none")
  mine = np.stack([loaded.view(path, view) for path in folder[2]])
  # The split's order is the folder's; match each image to a pipeline row.
  for image in mine:
    assert any(np.array_equal(image, row) for row in from_pipeline)
  normalised = pipeline_images(folder, view, view_kwargs, "imagenet")  # torchvision's mean/std
  mine = np.stack([np.asarray(loaded.transform(path, view)) for path in folder[2]])
  for image in mine:
    assert min(np.abs(image - row).max() for row in normalised) < 1e-4


def test_arrays_paths_and_bytes_give_the_same_view(folder):
  loaded = tiny_weights()
  path = folder[2][1]  # a PNG: decoding is lossless, so the array gives the same pixels
  from PIL import Image
  array = np.asarray(Image.open(path))
  with open(path, "rb") as f:
    encoded = f.read()
  by_path = loaded.view(path)
  assert by_path.shape == (224, 224, 3)
  np.testing.assert_array_equal(loaded.view(array), by_path)
  np.testing.assert_array_equal(loaded.view(encoded), by_path)
  dense = loaded.view(path, "dense_multiscale", scales=(224, 256))
  # 260 wide, 380 high: shorter side 224, the other round(380 * 224 / 260) = 327.
  assert dense["image_q224"].shape == (2, 327, 224, 3)
  np.testing.assert_array_equal(dense["image_q256"][1], dense["image_q256"][0][:, ::-1])
  with pytest.raises(ModelError, match="view"):
    loaded.view(path, "12crop")


def test_predict_returns_the_softmax_of_the_views(folder):
  loaded = tiny_weights()
  paths = folder[2]
  probabilities = loaded.predict(paths, view="10crop")
  assert probabilities.shape == (2, 1000)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  crops = np.asarray(loaded.transform(paths[0], "10crop"))
  logits = loaded.model.apply(loaded.variables, crops, train=False)
  want = np.asarray(jax.nn.softmax(logits, axis=-1)).mean(axis=0)
  np.testing.assert_allclose(probabilities[0], want, rtol=1e-4, atol=1e-7)
  # Network inputs straight into classify.predict, one view per image.
  inputs = np.stack([np.asarray(loaded.transform(p)) for p in paths])
  direct = classify.predict(loaded.model, loaded.variables, inputs, batch_size=1)
  np.testing.assert_allclose(direct, loaded.predict(paths), rtol=1e-5, atol=1e-7)
  best = loaded.top_k(direct, k=5)
  assert len(best) == 2 and len(best[0]) == 5 and best[0][0][1] == direct[0].max()
  with pytest.raises(ModelError, match="network inputs"):
    classify.predict(loaded.model, loaded.variables, np.zeros((224, 224, 3)))
