"""torchvision weights by enum name (through torchvision's own cache) and by safetensors file.

A separate process builds torchvision's ResNet-18 with random weights and
BatchNorm statistics and saves its state dict where torchvision's download
would put it ($TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth), so
`cnnjax.weights.load("torchvision/resnet18.IMAGENET1K_V1")` goes through
torchvision's own download-and-cache code without a network. The safetensors
file is read in a process where `import torch` fails, and the classify
command line runs there on a JPEG.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cnnjax import weights
from cnnjax.errors import CheckpointError
from weights_helpers import relative_error, run_script

TOLERANCE = 1e-4
SOURCE = "torchvision/resnet18.IMAGENET1K_V1"
# Makes `import torch` (and torchvision) fail in the process that runs it.
BLOCK_TORCH = """
import importlib.abc, sys
class BlockTorch(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('torch', 'torchvision'):
      raise ModuleNotFoundError(f'No module named {name!r} (blocked)')
    return None
sys.meta_path.insert(0, BlockTorch())
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  pytest.importorskip("safetensors")
  directory = tmp_path_factory.mktemp("torchvision")
  torch_home = directory / "torch_home"
  run_script("torch_reference.py", "resnet18", "IMAGENET1K_V1", "64", str(directory),
             env={"TORCH_HOME": str(torch_home)})
  return directory, torch_home, dict(np.load(directory / "reference.npz"))


def _logits(loaded, images):
  return loaded.model.apply(loaded.variables, loaded.normalize(images), train=False)


def test_by_enum_name_through_torchvisions_cache(reference, monkeypatch):
  pytest.importorskip("torchvision")
  _, torch_home, ref = reference
  monkeypatch.setenv("TORCH_HOME", str(torch_home))
  loaded = weights.load(SOURCE)
  assert relative_error(_logits(loaded, ref["images"]), ref["logits"]) <= TOLERANCE
  # The names torchvision's weights carry, and the package's own copy of them.
  assert loaded.class_names == tuple(ref["categories"])
  from cnnjax.weights.imagenet_classes import NAMES
  assert NAMES == tuple(ref["categories"])
  assert loaded.source.resize_size == int(ref["resize_size"][0])


def test_resize_sizes_are_torchvisions():
  torchvision_models = pytest.importorskip("torchvision.models")
  for name in weights.list_weights():
    source = weights.get_source(name)
    if source.origin == "torchvision":
      enum = torchvision_models.get_model_weights(source.architecture)[source.variant]
      assert enum.transforms().resize_size == [source.resize_size], name
      assert enum.transforms().crop_size == [source.image_size], name


def test_missing_download_is_named(tmp_path, monkeypatch):
  pytest.importorskip("torchvision")
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))
  monkeypatch.setattr("urllib.request.urlopen", _no_network)
  with pytest.raises(CheckpointError, match=r"resnet34-b627a593\.pth.*path="):
    weights.load("torchvision/resnet34.IMAGENET1K_V1")


def _no_network(*args, **kwargs):
  raise OSError("network unreachable")


def test_safetensors_without_torch_and_classify(reference, tmp_path):
  directory, _, ref = reference
  np.save(tmp_path / "images.npy", ref["images"])
  program = BLOCK_TORCH + f"""
import numpy as np
from cnnjax import weights
loaded = weights.load({SOURCE!r}, path={str(directory / 'weights.safetensors')!r})
images = np.load({str(tmp_path / 'images.npy')!r})
logits = loaded.model.apply(loaded.variables, loaded.normalize(images), train=False)
np.save({str(tmp_path / 'logits.npy')!r}, np.asarray(logits))
assert 'torch' not in sys.modules
"""
  run_script(program)
  assert relative_error(np.load(tmp_path / "logits.npy"), ref["logits"]) <= TOLERANCE

  from PIL import Image
  photo = tmp_path / "photo.jpg"
  Image.fromarray(np.kron(ref["images"][0], np.ones((5, 4, 1), np.uint8))).save(photo)
  result = run_script(BLOCK_TORCH + "import runpy; sys.argv = ['classify', "
                      f"{str(photo)!r}, '--weights', {SOURCE!r}, '--path', "
                      f"{str(directory / 'weights.safetensors')!r}]; "
                      "runpy.run_module('cnnjax.classify', run_name='__main__')")
  lines = result.stdout.strip().splitlines()
  assert lines[0] == str(photo) and len(lines) == 6, result.stdout
  from cnnjax.weights.imagenet_classes import NAMES
  probabilities = []
  for line in lines[1:]:
    percent, name = line.strip().split("%", 1)
    assert name.strip() in NAMES
    probabilities.append(float(percent))
  assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01


def test_safetensors_needs_only_the_weights_extra(tmp_path, monkeypatch):
  (tmp_path / "x.safetensors").write_bytes(b"")
  monkeypatch.setitem(__import__("sys").modules, "safetensors.numpy", None)
  with pytest.raises(CheckpointError, match=r"safetensors package \(not PyTorch\).*cnnjax\[weights\]"):
    weights.load(SOURCE, path=str(tmp_path / "x.safetensors"))
