"""torchvision models with random weights give the same logits after import.

Each test builds torchvision's network (weights=None), randomises the
BatchNorm statistics and affine parameters so that they matter, runs it on
random images in eval mode, imports its state dict and compares logits:
max |jax - torch| / max |torch| <= 1e-4 in float32. Inputs are as small as
each architecture allows while every pooled map still has more than one
position (so a wrong C,H,W -> H,W,C permutation of the first FC would show).
"""

from __future__ import annotations

import fractions
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cnnjax.errors import CheckpointError, CnnjaxError, ModelError  # noqa: E402
from cnnjax.interop import torchvision as tv  # noqa: E402
from cnnjax.models import layers  # noqa: E402
from cnnjax.models.googlenet import AuxiliaryHead  # noqa: E402
from torch_fill import fill_randomly  # noqa: E402  (tests/)

TOLERANCE = 1e-4
# These forward passes run once each: LLVM's optimisations would cost more
# compile time than they save at run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """torch's thread pool spins against XLA's on a small CPU; one thread is fastest here."""
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


def build_torch(name: str, seed: int = 0, **kwargs):
  if name == "googlenet" or name.startswith("vgg"):
    kwargs.setdefault("init_weights", False)
  with torch.device("meta"):
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
  return fill_randomly(model, seed)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  return float(np.abs(got - want).max() / np.abs(want).max())


def compare(name: str, torch_model, image_size: int, batch: int = 2, **load_kwargs):
  """Asserts equal logits; returns the imported (model, variables)."""
  images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(7))
  with torch.no_grad():
    want = torch_model(images).numpy()
  model, variables = tv.load(name, torch_model.state_dict(), **load_kwargs)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=FAST_COMPILE)
  got = np.asarray(apply(variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1))))
  assert got.shape == want.shape
  error = relative_error(got, want)
  print(f"{name}: max relative error {error:.2e}")
  assert error <= TOLERANCE, f"{name}: max relative error {error:.2e}"
  return model, variables


def build_narrow_vgg(name: str, width: int = 64, seed: int = 0):
  """torchvision's VGG with fc6/fc7 narrowed: the conv stack is the one under test.

  The full 4096-wide head (103M weights) is imported in the vgg19_bn case;
  here it is never even allocated (built on the meta device, then
  filled with random values), which keeps the suite fast. `load` reads the
  width from the state dict, as it would for a fine-tuned head.
  """
  with torch.device("meta"):
    model = getattr(torchvision.models, name)(weights=None, init_weights=False)
    in_features = model.classifier[0].in_features
    model.classifier[0] = torch.nn.Linear(in_features, width)
    model.classifier[3] = torch.nn.Linear(width, width)
    model.classifier[6] = torch.nn.Linear(width, 10)
  return fill_randomly(model, seed)


# ImageNet ResNets at 32 px (their smallest input: the last stage runs on
# 1x1 maps). The deep ones import into the scanned layout, which compiles in
# a fraction of the time and checks the layout conversion on the way.
@pytest.mark.parametrize("name,scan_blocks", [
    ("resnet18", False), ("resnet34", True), ("resnet50", True),
    ("resnet101", True), ("resnet152", True),
])
def test_resnet_logits_match(name, scan_blocks):
  model, variables = compare(name, build_torch(name), 32, scan_blocks=scan_blocks)
  assert model.scan_blocks == scan_blocks
  assert ("blocks" in variables["params"]["stage3"]) == scan_blocks


def test_alexnet_logits_match():
  # 96 px: pool5 is 2x2, adaptively averaged to 6x6 as torchvision does.
  compare("alexnet", build_torch("alexnet"), 96)


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn",
                                  "vgg16_bn"])
def test_vgg_logits_match_narrow_head(name):
  torch_model = build_narrow_vgg(name)
  # 64 px: pool5 is 2x2, adaptively averaged to 7x7 before fc6.
  compare(name, torch_model, 64)


def test_vgg19_bn_logits_match_with_the_full_head():
  # The biggest VGG with torchvision's own 25088 -> 4096 -> 4096 -> 1000 head.
  compare("vgg19_bn", build_torch("vgg19_bn"), 64, batch=1)


def test_googlenet_with_auxiliary_heads_matches():
  # Built as torchvision.models.googlenet(weights=None) builds it.
  torch_model = build_torch("googlenet", aux_logits=True, transform_input=False)
  model, variables = compare("googlenet", torch_model, 64, transform_input=False)
  assert model.aux_logits and "aux1" in variables["params"]
  # The auxiliary heads convert too. They run only in training mode (batch
  # statistics, dropout), so compare aux1 in eval mode on torch's own 4a
  # features, applied through the model's AuxiliaryHead module.
  images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    features = images
    for layer in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                  "inception3b", "maxpool3", "inception4a"):
      features = getattr(torch_model, layer)(features)
    want_aux1 = torch_model.aux1(features).numpy()
  head = jax.jit(functools.partial(_aux_head_eval, model), compiler_options=FAST_COMPILE)
  got_aux1 = np.asarray(head(variables, jnp.asarray(features.numpy().transpose(0, 2, 3, 1))))
  assert relative_error(got_aux1, want_aux1) <= TOLERANCE


def _aux_head_eval(model, variables, features_nhwc):
  """aux1 of the imported model in eval mode, applied to given 4a features."""
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(layers.BatchNorm, epsilon=model.bn_epsilon)
  head = AuxiliaryHead(model.num_classes, functools.partial(layers.ConvNormAct, conv=conv,
                                                            norm=norm, act=nn.relu),
                       nn.Dense, nn.relu, pool="adaptive")
  head_variables = {collection: tree["aux1"] for collection, tree in variables.items()}
  return head.apply(head_variables, features_nhwc, train=False)


def test_googlenet_as_published_has_no_auxiliary_heads():
  # torchvision's published GoogLeNet weights drop aux1/aux2 and expect
  # transform_input=True, load's default.
  torch_model = build_torch("googlenet", aux_logits=False, transform_input=True)
  assert not any(key.startswith("aux") for key in torch_model.state_dict())
  model, variables = compare("googlenet", torch_model, 64)
  assert model.transform_input and not model.aux_logits and "aux1" not in variables["params"]


# ------------------------------------------------------------ files and errors


def small_state():
  return build_torch("resnet18").state_dict()


def test_pth_and_safetensors_files_load_like_the_dict(tmp_path):
  safetensors_torch = pytest.importorskip("safetensors.torch")
  state = small_state()
  torch.save(state, tmp_path / "weights.pth")
  torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}},
             tmp_path / "wrapped.pth")
  safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()},
                              str(tmp_path / "weights.safetensors"))
  _, from_dict = tv.load("resnet18", state)
  for file_name in ("weights.pth", "wrapped.pth", "weights.safetensors"):
    _, from_file = tv.load("resnet18", str(tmp_path / file_name))
    jax.tree.map(np.testing.assert_array_equal, from_file, from_dict)


def test_numpy_state_dict_is_accepted():
  state = {key: value.numpy() for key, value in small_state().items()}
  model, variables = tv.load("resnet18", state)
  np.testing.assert_array_equal(
      variables["params"]["stem"]["conv"]["kernel"],
      state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["stem"]["bn"]["var"],
                                state["bn1.running_var"])
  assert model.num_classes == 1000


def test_pickled_objects_are_refused(tmp_path):
  # Any class outside torch's weights-only allow-list stands for code that
  # plain unpickling would run.
  torch.save({"conv1.weight": fractions.Fraction(1, 3)}, tmp_path / "evil.pth")
  with pytest.raises(CheckpointError, match="weights-only"):
    tv.load("resnet18", str(tmp_path / "evil.pth"))


def test_missing_key_is_named():
  state = small_state()
  del state["layer2.0.downsample.1.running_var"]
  with pytest.raises(CheckpointError, match=r"missing.*'layer2\.0\.downsample\.1\.running_var'"):
    tv.load("resnet18", state)


def test_unexpected_key_is_named():
  state = small_state()
  state["layer1.0.conv3.weight"] = torch.zeros(64, 64, 1, 1)
  with pytest.raises(CheckpointError, match=r"unexpected.*'layer1\.0\.conv3\.weight'"):
    tv.load("resnet18", state)


def test_wrong_architecture_fails_naming_a_key():
  # ResNet-18's 3x3 conv1 where ResNet-50 has a 1x1 bottleneck reduction.
  with pytest.raises(CheckpointError, match=r"'layer1\.0\.conv1\.weight' has shape") as error:
    tv.load("resnet50", small_state())
  assert isinstance(error.value, CnnjaxError)


def test_shape_mismatch_is_named():
  state = small_state()
  state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 5, 5)
  with pytest.raises(CheckpointError, match=r"'layer3\.1\.conv2\.weight' has shape \(256, 256, 5, 5\)"):
    tv.load("resnet18", state)


def test_unknown_name_lists_close_matches():
  with pytest.raises(ModelError, match="resnet50"):
    tv.load("resnet05", {})


def test_missing_file_is_named(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    tv.load("resnet18", str(tmp_path / "nope.pth"))
