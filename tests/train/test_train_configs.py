"""Recipes load, carry the papers' numbers and validate; bad configs fail by name before compute."""

from __future__ import annotations

import pytest

from cnnjax.configs import RECIPES, base, get_recipe
from cnnjax.errors import ConfigError
from cnnjax.train import config as config_lib
from cnnjax.train.durations import boundaries_to_steps, to_steps

ALL_RECIPES = [
    ("quickstart", None), ("alexnet_imagenet", None), ("vgg_imagenet", "A"),
    ("vgg_imagenet", "A_LRN"), ("vgg_imagenet", "D,jitter"), ("vgg_imagenet", "E,S=384"),
    ("googlenet_imagenet", None), ("resnet_imagenet", "50"), ("resnet_imagenet", "34,plain"),
    ("resnet_imagenet", "50,v1,bf16"), ("resnet_cifar10", "20"), ("resnet_cifar10", "110"),
    ("resnet_cifar10", "1202"), ("resnet_cifar10", "56,plain"),
]


def _model_names():
  import cnnjax.models
  return cnnjax.models.list_models()


@pytest.mark.parametrize("name,arg", ALL_RECIPES)
def test_every_recipe_validates_and_documents_itself(name, arg):
  config = get_recipe(name, arg)
  config_lib.validate(config, num_devices=1, model_names=_model_names())
  module = __import__(f"cnnjax.configs.{name}", fromlist=["get_config"])
  doc = module.__doc__
  assert ("cnnjax-train" in doc or "python train.py" in doc) and "Hardware" in doc and ("Aims at" in doc or "Result" in doc)


def test_recipes_list_matches_files():
  for name in RECIPES:
    assert get_recipe(name) is not None


def test_paper_numbers():
  alexnet = get_recipe("alexnet_imagenet")
  assert (alexnet.batch_size, alexnet.learning_rate, alexnet.weight_decay, alexnet.momentum) == (
      128, 0.01, 5e-4, 0.9)
  assert alexnet.schedule == "plateau" and alexnet.plateau_max_reductions == 3
  vgg = get_recipe("vgg_imagenet", "D,jitter")
  assert vgg.model == "vgg_d" and vgg.batch_size == 256 and vgg.num_epochs == 74
  assert dict(vgg.augment_kwargs)["scale_min"] == 256 and dict(vgg.augment_kwargs)["scale_max"] == 512
  assert get_recipe("vgg_imagenet", "A_LRN").model == "vgg_a_lrn"
  goog = get_recipe("googlenet_imagenet")
  assert goog.schedule == "exponential" and goog.lr_decay_factor == 0.96
  assert goog.lr_decay_every_epochs == 8 and goog.aux_loss_weight == 0.3 and goog.ema_decay > 0
  resnet = get_recipe("resnet_imagenet", "50,v1")
  assert resnet.model == "resnet50" and dict(resnet.model_kwargs) == {"version": "1"}
  assert resnet.weight_decay == 1e-4 and resnet.learning_rate == 0.1
  assert get_recipe("resnet_imagenet", "34,plain").model == "plain34"
  cifar = get_recipe("resnet_cifar10", "110")
  assert cifar.model == "cifar_resnet110" and tuple(cifar.lr_boundaries_steps) == (32000, 48000)
  assert cifar.num_steps == 64000 and cifar.error_warmup_factor == 0.1
  assert cifar.train_split == "train[:45000]" and cifar.eval_split == "train[45000:]"
  assert get_recipe("resnet_cifar10", "20").error_warmup_factor == 0.0
  assert get_recipe("resnet_cifar10", "44,plain").model == "cifar_plain44"


@pytest.mark.parametrize("name,arg", [("vgg_imagenet", "F"), ("vgg_imagenet", "D,wobble"),
                                      ("resnet_imagenet", "51"), ("resnet_cifar10", "21"),
                                      ("resnet_cifar10", "20,fancy")])
def test_bad_recipe_arguments(name, arg):
  with pytest.raises(ConfigError):
    get_recipe(name, arg)


def test_recipes_are_locked():
  config = get_recipe("quickstart")
  with pytest.raises(AttributeError):
    config.learning_rat = 0.1  # a typo must not silently add a key
  with pytest.raises(TypeError):
    config.batch_size = "64"
  config.model_kwargs.width_multiplier = 0.5  # free-form dicts stay open


@pytest.mark.parametrize("key,value,fragment", [
    ("augment", "cifar10", "augment"),
    ("schedule", "cosine", "schedule"),
    ("weight_decay_mask", "biases", "weight_decay_mask"),
    ("dtype", "float64", "dtype"),
    ("model", "resnet51", "model"),
    ("momentum", 1.5, "momentum"),
    ("learning_rate", -0.1, "learning_rate"),
    ("bn_group_size", -3, "bn_group_size"),
    ("profile_steps", (5,), "profile_steps"),
    ("seed", 2**32, "seed"),  # JAX keys hold 32 bits
    ("num_classes", 2**31, "num_classes"),
    ("learning_rate", float("nan"), "learning_rate"),
    ("lr_boundaries_steps", (1.5,), "lr_boundaries_steps"),
    ("on_bad_image", "ignore", "on_bad_image"),
])
def test_bad_values_are_named(key, value, fragment):
  config = get_recipe("quickstart").to_dict()
  config[key] = value
  with pytest.raises(ConfigError, match=fragment):
    config_lib.validate(config, num_devices=1, model_names=_model_names())


def test_unknown_key_missing_key_and_wrong_type():
  config = get_recipe("quickstart").to_dict()
  with pytest.raises(ConfigError, match="learning_rat.*did you mean 'learning_rate'"):
    config_lib.validate(dict(config, learning_rat=0.1), num_devices=1)
  with pytest.raises(ConfigError, match="missing"):
    config_lib.validate({k: v for k, v in config.items() if k != "seed"}, num_devices=1)
  with pytest.raises(ConfigError, match="batch_size must be of type int"):
    config_lib.validate(dict(config, batch_size=64.0), num_devices=1)
  with pytest.raises(ConfigError, match="nesterov must be of type bool"):
    config_lib.validate(dict(config, nesterov=1), num_devices=1)


def test_bn_group_size_has_one_home():
  config = get_recipe("quickstart").to_dict()
  config["model_kwargs"] = dict(config["model_kwargs"], bn_group_size=8)
  with pytest.raises(ConfigError, match="model_kwargs.bn_group_size=8.*config.bn_group_size"):
    config_lib.validate(config, num_devices=1, model_names=_model_names())


def test_batch_must_divide_over_devices():
  config = get_recipe("quickstart").to_dict()
  config_lib.validate(dict(config, batch_size=64), num_devices=8)
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    config_lib.validate(dict(config, batch_size=60), num_devices=8)
  with pytest.raises(ConfigError, match="eval_batch_size"):
    config_lib.validate(dict(config, batch_size=64, eval_batch_size=100), num_devices=8)


def test_recipe_requirements():
  config = get_recipe("quickstart").to_dict()
  with pytest.raises(ConfigError, match="multistep"):
    config_lib.validate(dict(config, schedule="multistep"), num_devices=1)
  with pytest.raises(ConfigError, match="plateau"):
    config_lib.validate(dict(config, schedule="plateau", eval_every_steps=-1), num_devices=1)
  with pytest.raises(ConfigError, match="no length"):
    config_lib.validate(dict(config, num_steps=-1, num_epochs=-1.0), num_devices=1)
  with pytest.raises(ConfigError, match="init_from"):
    config_lib.validate(dict(config, init_from="/somewhere"), num_devices=1)


def test_durations_beyond_int32_steps_are_refused():
  config = base.get_base_config()
  config.warmup_epochs = 1e9
  with pytest.raises(ConfigError, match="config.warmup_epochs"):
    to_steps(config, "warmup", steps_per_epoch=100)


def test_durations_convert_in_one_place():
  config = base.get_base_config()
  config.num_epochs = 90.0
  assert to_steps(config, "num", steps_per_epoch=5004) == 90 * 5004
  config.num_steps = 100  # steps win, so command-line overrides shorten any recipe
  assert to_steps(config, "num", steps_per_epoch=5004) == 100
  assert to_steps(config, "warmup", steps_per_epoch=10, default=0) == 0
  config.warmup_epochs = 0.5
  assert to_steps(config, "warmup", steps_per_epoch=10) == 5
  config.lr_boundaries_epochs = (30.0, 60.0)
  assert boundaries_to_steps(config, 100) == (3000, 6000)
  config.lr_boundaries_steps = (7, 9)
  assert boundaries_to_steps(config, 100) == (7, 9)
