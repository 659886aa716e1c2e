"""torchvision's ResNet-18 (random weights, saved as safetensors by a separate
process) fine-tuned and scored on a generated two-class image folder.

Fine-tuning through the recipe: every layer but the classifier starts equal
to the imported weights, the classifier is freshly initialised with 2
outputs, the run's log says so, and the training loss falls. Scoring:
`python -m cnnjax.evaluate --weights` gives the errors that the single-image
path (`Weights.predict`, the same views) gives image by image.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
from data_helpers import write_image

from cnnjax import weights
from cnnjax.configs import get_recipe
from cnnjax.errors import ConfigError
from cnnjax.interop.state_dict import flatten_tree
from cnnjax.train import loop, writer
from weights_helpers import run_script

SOURCE = "torchvision/resnet18.IMAGENET1K_V1"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  pytest.importorskip("safetensors")
  directory = tmp_path_factory.mktemp("resnet18")
  run_script("torch_reference.py", "resnet18", "IMAGENET1K_V1", "32", str(directory),
             env={"TORCH_HOME": str(directory / "torch_home")})
  return str(directory / "weights.safetensors")


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
  """Reddish and bluish noise, 48x56 px: an easy task whose loss must fall."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  for split, count in (("train", 16), ("val", 4)):
    for label, channel in (("red", 0), ("blue", 2)):
      for index in range(count):
        image = rng.integers(0, 120, (48, 56, 3), dtype=np.uint8)
        image[..., channel] += 120
        write_image(os.path.join(root, "images", split, label, f"{index}.png"), image)
  return str(root / "images"), str(root / "data")


def finetune_config(weights_file, folder, **overrides):
  images, data_dir = folder
  config = get_recipe("finetune", f"weights={SOURCE},path={weights_file},"
                                  f"dataset=image_folder:{images}")
  config.input.data_dir = data_dir
  config.input.image_size = 32
  config.input.augment = "none"
  config.run.batch_size = 8
  config.eval.batch_size = 8
  config.run.num_steps = 16
  config.run.num_epochs = -1.0
  config.schedule.warmup_epochs = -1.0
  config.schedule.warmup_steps = 2
  config.optimizer.learning_rate = 0.002
  config.eval.every_epochs = -1.0
  config.checkpoint.every_epochs = -1.0
  config.run.log_every_steps = 1
  config.run.progress_bar = False
  config.run.compilation_cache_dir = "none"
  for path, value in overrides.items():  # "group.key": value
    group, key = path.split(".")
    config[group][key] = value
  return config


@pytest.mark.slow
def test_finetune_copies_every_layer_but_the_classifier(imported, two_classes, tmp_path, caplog):
  config = finetune_config(imported, two_classes)
  assert config.model.init_from == f"{SOURCE}:{imported}"
  assert config.input.normalize == "imagenet"
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  prepared = loop.prepare(loop.config_lib.validate(config), workdir)
  state, how = loop.initial_state(prepared)
  prepared.store.close()
  assert "new (freshly initialised): fc" in how and "stage4/block2/conv2/bn" in how
  source = flatten_tree(weights.load(SOURCE, path=imported).variables)
  start = flatten_tree({"params": state.params, "batch_stats": state.batch_stats})
  assert start[("params", "fc", "kernel")].shape == (512, 2)
  copied = [path for path in start if path[1] != "fc"]
  assert len(copied) == len(source) - 2
  for path in copied:
    np.testing.assert_array_equal(np.asarray(start[path]), np.asarray(source[path]))

  with caplog.at_level("INFO"):
    summary = loop.run(config, str(tmp_path / "trained"))
  assert any("warm start from" in record.getMessage() and "fc" in record.getMessage()
             for record in caplog.records)
  losses = [row["loss"] for row in writer.read_metrics(str(tmp_path / "trained"), "train")]
  assert len(losses) >= 10
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
  assert summary["variables"]["params"]["fc"]["kernel"].shape == (512, 2)


def test_init_from_names_the_fix(imported, two_classes, tmp_path):
  from cnnjax.train import config as config_lib
  from cnnjax.train import workdir as workdir_lib
  model = config_lib.validate(finetune_config(imported, two_classes), num_devices=1).model
  wrong_model = dataclasses.replace(model, name="resnet34")
  with pytest.raises(ConfigError, match="config.model.name='resnet18'"):
    workdir_lib.check_init_from(wrong_model, str(tmp_path))
  keras_v1 = dataclasses.replace(model, name="resnet50", init_from="keras/resnet50:" + imported)
  with pytest.raises(ConfigError, match="'version': '1'"):
    workdir_lib.check_init_from(keras_v1, str(tmp_path))
  with pytest.raises(ConfigError, match="keras/vgg16"):
    config_lib.validate(finetune_config(imported, two_classes,
                                        **{"model.init_from": "keras/vgg61"}), num_devices=1)
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.validate(finetune_config(imported, two_classes, **{
        "model.init_from": SOURCE + ":/no/such.safetensors"}), num_devices=1)


@pytest.mark.slow
def test_evaluate_scores_published_weights_like_predict(imported, two_classes, tmp_path):
  import json

  from cnnjax.evaluate.__main__ import main
  images, data_dir = two_classes
  output = tmp_path / "report.json"
  assert main(["--weights", f"{SOURCE}:{imported}", "--dataset", f"image_folder:{images}",
               "--data_dir", data_dir, "--views", "10crop", "--batch_size", "4",
               "--no_progress", "--output", str(output)]) == 0
  report = json.loads(output.read_text())
  assert report["num_examples"] == 8 and report["weights"] == [f"{SOURCE}:{imported}"]
  loaded = weights.load(SOURCE, path=imported)
  paths, labels = [], []
  for label, name in enumerate(("blue", "red")):  # the folder's classes, sorted
    folder = os.path.join(images, "val", name)
    paths += [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    labels += [label] * len(os.listdir(folder))
  probabilities = loaded.predict(paths, view="10crop")
  labels = np.array(labels)
  top1_error = float(np.mean(probabilities.argmax(axis=1) != labels))
  loss = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))
  assert report["top1_error"] == pytest.approx(top1_error)
  assert report["loss"] == pytest.approx(loss, rel=1e-3)
