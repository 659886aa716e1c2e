"""Keras applications' weights give Keras's logits after import.

keras.applications builds each network with random weights (every bias and
BatchNorm statistic randomised, so a wrong mapping or an unfolded conv bias
shows), saves it in one of Keras's file formats and records its logits on
preprocess_input(images), in a separate process. Here `cnnjax.weights.load`
reads the file (h5py only: this process never imports TensorFlow or Keras)
and the network's logits on `normalize(images)` must agree within 1e-4 of
their scale. ResNets run at 64 px (global pooling takes any size; Keras
builds them with input_shape); VGG's fully connected layers need 224.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from cnnjax import models, weights
from cnnjax.errors import CheckpointError, ModelError
from weights_helpers import HERE, relative_error, run_script

pytest.importorskip("h5py")
TOLERANCE = 1e-4
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# (Keras application, image size, file format, weights source)
CASES = {
    "keras/vgg16": ("VGG16", 224, "legacy_h5"),
    "keras/vgg19": ("VGG19", 224, "weights_h5"),
    "keras/resnet50": ("ResNet50", 64, "weights_h5"),
    "keras/resnet152": ("ResNet152", 64, "keras"),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
  """{source: reference.npz contents}, all four built by one Keras process."""
  pytest.importorskip("keras")
  out = {}
  program = ["import runpy, sys"]
  for source, (application, size, file_format) in CASES.items():
    directory = tmp_path_factory.mktemp(application)
    out[source] = directory
    program.append(f"sys.argv = ['keras_reference.py', {application!r}, '{size}', "
                   f"{file_format!r}, {str(directory)!r}]")
    program.append(f"runpy.run_path({os.path.join(HERE, 'keras_reference.py')!r}, "
                   "run_name='__main__')")
  run_script("\n".join(program))
  return {source: dict(np.load(directory / "reference.npz")) for source, directory in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize("source", list(CASES))
def test_logits_match_keras(source, references):
  reference = references[source]
  loaded = weights.load(source, path=str(reference["path"]),
                        **({"scan_blocks": True} if "resnet" in source else {}))
  apply = jax.jit(lambda v, x: loaded.model.apply(v, x, train=False),
                  compiler_options=FAST_COMPILE)
  got = apply(loaded.variables, loaded.normalize(reference["images"]))
  error = relative_error(got, reference["logits"])
  assert error <= TOLERANCE, f"{source}: max relative error {error:.2e}"
  assert loaded.convention.source_order == "BGR"
  if "resnet" in source:
    assert loaded.model.version == "1" and loaded.model.bn_epsilon == pytest.approx(1.001e-5)
  else:
    assert loaded.model.config == {"keras/vgg16": "D", "keras/vgg19": "E"}[source]
  assert len(loaded.class_names) == 1000 and loaded.class_names[0] == "tench"


@pytest.mark.slow
def test_wrong_architecture_is_named(references):
  with pytest.raises(CheckpointError, match=r"conv4_block7|conv3_block5|layer"):
    weights.load("keras/resnet101", path=str(references["keras/resnet50"]["path"]))


def test_unknown_source_and_pretrained_create():
  with pytest.raises(ModelError, match="keras/vgg16"):
    weights.load("keras/vgg61")
  with pytest.raises(ModelError, match=r"cnnjax\.weights\.load.*torchvision/resnet18"):
    models.create("resnet18", pretrained=True)
  with pytest.raises(ModelError) as error:
    models.create("resnet18", widht=2)
  message = str(error.value)
  assert message.count("scan_blocks") == 1 and "did you mean 'width'" in message


def test_list_models_filters():
  with_weights = models.list_models(has_weights=True)
  assert {"resnet50", "vgg16", "vgg_d", "vgg_e", "alexnet_v2"} <= set(with_weights)
  assert "cifar_resnet20" not in with_weights and "vgg_c" not in with_weights
  assert models.list_models(family="vgg", pattern="vgg_?", has_weights=True) == [
      "vgg_a", "vgg_b", "vgg_d", "vgg_e"]
  assert "cifar_resnet20" in models.list_models(has_weights=False)
  assert models.registry.weights_of("vgg_d") == ("torchvision/vgg16.IMAGENET1K_V1", "keras/vgg16")
  for name in weights.list_weights():
    assert weights.get_source(name).model in with_weights
  with pytest.raises(ModelError, match="family"):
    models.list_models(family="vggg")
