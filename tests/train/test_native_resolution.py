"""An image folder trains at the model's native resolution, and says when that is far
from the images' own size."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from train_helpers import make_tiny_config

from cnnjax.train import inputs, run

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> str:
  """3 classes x 30 noisy single-colour images, 40-120 px, JPEG and PNG, no split folders."""
  root = str(tmp_path_factory.mktemp("colours"))
  rng = np.random.default_rng(0)
  for index, colour in enumerate(COLOURS):
    folder = os.path.join(root, f"class{index}")
    os.makedirs(folder)
    for i in range(30):
      height, width = rng.integers(40, 121, 2)
      pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 30, (height, width, 3))
      image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
      image.save(os.path.join(folder, f"{i}.{'jpg' if i % 2 else 'png'}"))
  return root


def test_default_image_size_is_the_models_native_resolution(colour_folder, tmp_path, capsys):
  config = make_tiny_config(str(tmp_path / "data"), **{
      "input.dataset": f"image_folder:{colour_folder}", "input.image_size": 0,
      "run.num_steps": 30, "run.batch_size": 16, "eval.num_batches": 0,
      "optimizer.learning_rate": 0.05})
  workdir = str(tmp_path / "run")
  summary = run(config, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["input"]["image_size"] == 32  # cifar_resnet20's, not 224
  assert summary["eval"]["top1_error"] <= 0.10, summary["eval"]
  out = capsys.readouterr().out
  note = [line for line in out.splitlines() if line.startswith("note:")]
  assert len(note) == 1 and "config.input.image_size" in note[0] and "32" in note[0], out


def _input(config):
  from cnnjax.train import config as config_lib
  return config_lib.validate(config).input


def test_no_note_when_the_images_fit(colour_folder, digits_dir):
  config = make_tiny_config(digits_dir, **{"input.image_size": 0})
  assert inputs.resolve_image_size(_input(config), 32) == (32, None)  # digits are 32x32
  size, note = inputs.resolve_image_size(_input(make_tiny_config(
      digits_dir, **{"input.dataset": f"image_folder:{colour_folder}", "input.image_size": 64})),
                                         32)
  assert size == 64 and note is None  # ~80-pixel images at 64: close enough
