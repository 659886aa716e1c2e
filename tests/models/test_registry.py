"""The registry: names, published parameter counts, option checking, imports."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.models as models
from cnnjax.errors import ModelError

# Published parameter counts (weights + biases (+ BN scale/shift)), from the
# papers and torchvision; GoogLeNet without its auxiliary heads.
PUBLISHED_PARAMS = {
    "alexnet": 60_965_224,
    "alexnet_v2": 61_100_840,
    "vgg_a": 132_863_336, "vgg11": 132_863_336, "vgg_a_lrn": 132_863_336,
    "vgg_b": 133_047_848, "vgg13": 133_047_848,
    "vgg_c": 133_638_952,
    "vgg_d": 138_357_544, "vgg16": 138_357_544,
    "vgg_e": 143_667_240, "vgg19": 143_667_240,
    # torchvision vgg*_bn
    "vgg_a_bn": 132_868_840, "vgg11_bn": 132_868_840,
    "vgg_b_bn": 133_053_736, "vgg13_bn": 133_053_736,
    "vgg_d_bn": 138_365_992, "vgg16_bn": 138_365_992,
    "vgg_e_bn": 143_678_248, "vgg19_bn": 143_678_248,
    # C with BN: C's count + 2 x (conv channels 2*64 + 2*128 + 3*256 + 6*512)
    "vgg_c_bn": 133_638_952 + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512),
    "googlenet": 6_998_552,
    "googlenet_torchvision": 6_624_904,
    # the paper's network, BN instead of conv biases: -bias +2*channels per conv
    "googlenet_bn": 6_998_552 + 7_280,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    # plain nets: the ResNets minus their projection shortcuts (conv + BN)
    "plain18": 11_689_512 - (8_192 + 256 + 32_768 + 512 + 131_072 + 1_024),
    "plain34": 21_797_672 - (8_192 + 256 + 32_768 + 512 + 131_072 + 1_024),
    "plain50": 25_557_032 - 2_776_576,
    "plain101": 44_549_160 - 2_776_576,
    "plain152": 60_192_808 - 2_776_576,
    "cifar_resnet20": 269_722, "cifar_resnet32": 464_154, "cifar_resnet44": 658_586,
    "cifar_resnet56": 853_018, "cifar_resnet110": 1_727_962, "cifar_resnet1202": 19_421_274,
    # option A shortcuts have no parameters: plain and residual counts agree
    "cifar_plain20": 269_722, "cifar_plain32": 464_154, "cifar_plain44": 658_586,
    "cifar_plain56": 853_018, "cifar_plain110": 1_727_962,
}


def count_params(model, image_size: int) -> int:
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)},
                         jnp.zeros((1, image_size, image_size, 3)), train=False))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def test_every_registered_model_has_a_published_count():
  assert sorted(PUBLISHED_PARAMS) == sorted(models.list_models())


@pytest.mark.parametrize("name", models.list_models())
def test_builds_at_full_size_with_the_published_parameter_count(name):
  """Traces init in train mode with features (shapes only, nothing computed)."""
  spec = models.get_spec(name)
  overrides = {}
  if spec.family == "googlenet":
    overrides["aux_logits"] = False  # published counts exclude the auxiliary heads
  if spec.family in ("resnet", "cifar_resnet"):
    overrides["scan_blocks"] = True  # same count, traced much faster (1202 layers)
  model = models.create(name, **overrides)
  images = jnp.zeros((2, spec.image_size, spec.image_size, 3))
  (logits, feats), variables = jax.eval_shape(lambda: model.init_with_output(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, images, train=True,
      features=True))
  params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
  assert params == PUBLISHED_PARAMS[name]
  assert logits.shape == (2, spec.num_classes) and logits.dtype == jnp.float32
  assert feats["pre_logits"].shape[0] == 2 and feats["pre_logits"].ndim == 2
  assert ("batch_stats" in variables) == bool(
      getattr(model, "use_bn", False))


def test_googlenet_auxiliary_heads_add_their_parameters():
  # Each head: 1x1 conv (C_in -> 128, + bias), FC 2048 -> 1024, FC 1024 -> 1000.
  head = lambda c_in: c_in * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000
  with_aux = count_params(models.create("googlenet"), 224)
  assert with_aux == 6_998_552 + head(512) + head(528)
  # torchvision: googlenet(aux_logits=True) has 13,004,888 parameters.
  assert count_params(models.create("googlenet_torchvision"), 224) == 13_004_888


def test_cifar_models_default_to_ten_classes():
  assert models.create("cifar_resnet20").num_classes == 10
  assert models.create("resnet18").num_classes == 1000
  assert models.create("cifar_resnet20", num_classes=100).num_classes == 100


def test_list_models_is_in_natural_order():
  names = models.list_models()
  assert names.index("resnet18") < names.index("resnet50") < names.index("resnet101")
  assert {"alexnet", "vgg_c", "googlenet", "resnet152", "cifar_resnet1202"} <= set(names)


def test_unknown_model_names_close_matches():
  with pytest.raises(ModelError, match="resnet50"):
    models.create("resnet05")
  with pytest.raises(ModelError, match="vgg16"):
    models.create("vgg_16")


def test_unknown_override_names_allowed_options():
  with pytest.raises(ModelError, match="scan_blocks"):
    models.create("resnet50", scan_block=True)
  with pytest.raises(ModelError, match="options:.*width_multiplier"):
    models.create("vgg16", depth=3)


@pytest.mark.parametrize("name, option, value, allowed", [
    ("resnet50", "version", "2", "'1.5'"),
    ("resnet50", "shortcut", "D", "'C'"),
    ("vgg16", "activation", "gelu", "'logistic'"),
    ("alexnet", "kernel_init", "orthogonal", "'gaussian'"),
    ("googlenet", "branch5x5_kernel", 7, "3"),
])
def test_bad_option_values_name_the_allowed_ones(name, option, value, allowed):
  with pytest.raises(ModelError, match=allowed):
    models.create(name, **{option: value})


def test_bad_option_value_on_a_module_built_directly():
  with pytest.raises(ModelError, match="shortcut"):
    models.resnet.ResNet(stage_sizes=(1, 1), shortcut="X")


def test_importing_models_does_not_import_tensorflow():
  code = ("import sys, cnnjax.models; "
          "bad = [m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets', 'optax', 'ml_collections', 'torch')]; "
          "print(bad); assert not bad, bad")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
