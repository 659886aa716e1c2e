"""Recipes load, carry the papers' numbers and validate; bad configs fail by name before compute."""

from __future__ import annotations

import copy
import dataclasses
import json

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
  assert (alexnet.run.batch_size, alexnet.optimizer.learning_rate, alexnet.optimizer.weight_decay,
          alexnet.optimizer.momentum) == (128, 0.01, 5e-4, 0.9)
  assert alexnet.schedule.name == "plateau" and alexnet.schedule.plateau.max_reductions == 3
  vgg = get_recipe("vgg_imagenet", "D,jitter")
  assert vgg.model.name == "vgg_d" and vgg.run.batch_size == 256 and vgg.run.num_epochs == 74
  kwargs = dict(vgg.input.augment_kwargs)
  assert kwargs["scale_min"] == 256 and kwargs["scale_max"] == 512
  assert get_recipe("vgg_imagenet", "A_LRN").model.name == "vgg_a_lrn"
  goog = get_recipe("googlenet_imagenet")
  assert goog.schedule.name == "exponential" and goog.schedule.exponential.factor == 0.96
  assert goog.schedule.exponential.every_epochs == 8 and goog.loss.aux_weight == 0.3
  assert goog.optimizer.ema_decay > 0
  resnet = get_recipe("resnet_imagenet", "50,v1")
  assert resnet.model.name == "resnet50" and dict(resnet.model.kwargs) == {"version": "1"}
  assert resnet.optimizer.weight_decay == 1e-4 and resnet.optimizer.learning_rate == 0.1
  assert get_recipe("resnet_imagenet", "34,plain").model.name == "plain34"
  cifar = get_recipe("resnet_cifar10", "110")
  assert cifar.model.name == "cifar_resnet110"
  assert tuple(cifar.schedule.multistep.boundaries_steps) == (32000, 48000)
  assert cifar.run.num_steps == 64000 and cifar.schedule.error_warmup.factor == 0.1
  assert cifar.input.train_split == "train[:45000]" and cifar.input.eval_split == "train[45000:]"
  assert get_recipe("resnet_cifar10", "20").schedule.error_warmup.factor == 0.0
  assert get_recipe("resnet_cifar10", "44,plain").model.name == "cifar_plain44"


@pytest.mark.parametrize("name,arg", [("vgg_imagenet", "F"), ("vgg_imagenet", "D,wobble"),
                                      ("resnet_imagenet", "51"), ("resnet_cifar10", "21"),
                                      ("resnet_cifar10", "20,fancy")])
def test_bad_recipe_arguments(name, arg):
  with pytest.raises(ConfigError):
    get_recipe(name, arg)


def test_recipes_are_locked():
  config = get_recipe("quickstart")
  with pytest.raises(AttributeError):
    config.optimizer.learning_rat = 0.1  # a typo must not silently add a key
  with pytest.raises(AttributeError):
    config.learning_rate = 0.1  # nor a setting outside its group
  with pytest.raises(TypeError):
    config.run.batch_size = "64"
  config.model.kwargs.width_multiplier = 0.5  # free-form dicts stay open


def _with(config, **values):
  """A deep copy of the nested dict `config` with values set by path ("optimizer.momentum")."""
  config = copy.deepcopy(config)
  for path, value in values.items():
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


@pytest.mark.parametrize("path,value,fragment", [
    ("input.augment", "cifar10", "input.augment"),
    ("schedule.name", "cosine", "schedule.name"),
    ("optimizer.weight_decay_mask", "biases", "weight_decay_mask"),
    ("model.dtype", "float64", "model.dtype"),
    ("model.dtype", "float16", "loss scaling"),
    ("model.name", "resnet51", "model.name"),
    ("optimizer.momentum", 1.5, "optimizer.momentum"),
    ("optimizer.learning_rate", -0.1, "optimizer.learning_rate"),
    ("model.bn_group_size", -3, "bn_group_size"),
    ("run.profile_steps", (5,), "profile_steps"),
    ("run.seed", 2**32, "run.seed"),  # JAX keys hold 32 bits
    ("model.num_classes", 2**31, "num_classes"),
    ("optimizer.learning_rate", float("nan"), "learning_rate"),
    ("schedule.multistep.boundaries_steps", (1.5,), "boundaries_steps"),
    ("schedule.multistep.boundaries_epochs", (60.0, 30.0), "increasing"),
    ("schedule.multistep.factor", 1.5, "schedule.multistep.factor"),
    ("schedule.exponential.every_steps", -2, "every_steps"),
    ("input.on_bad_image", "ignore", "on_bad_image"),
    ("input.boundary", "gpu", "input.boundary"),
    ("eval.view", "5crop", "eval.view"),
    ("checkpoint.keep", 0, "checkpoint.keep"),
    ("loss.name", "hinge", "loss.name"),
])
def test_bad_values_are_named(path, value, fragment):
  config = _with(get_recipe("resnet_cifar10", "20").to_dict(), **{path: value})
  with pytest.raises(ConfigError, match=fragment):
    config_lib.validate(config, num_devices=1, model_names=_model_names())


def test_only_the_chosen_schedule_needs_a_factor_below_one():
  config = get_recipe("quickstart").to_dict()  # warmup_cosine: no factor read
  config_lib.validate(_with(config, **{"schedule.plateau.factor": 1.5}), num_devices=1)
  with pytest.raises(ConfigError, match="schedule.plateau.factor=1.5"):
    config_lib.validate(_with(config, **{"schedule.plateau.factor": 1.5, "schedule.name": "plateau",
                                         "eval.every_steps": 10}), num_devices=1)


def test_unknown_key_missing_key_and_wrong_type():
  config = get_recipe("quickstart").to_dict()
  with pytest.raises(ConfigError, match="learnig_rate.*config.optimizer.*did you mean "
                     "'learning_rate'"):
    config_lib.validate(_with(config, **{"optimizer.learnig_rate": 0.1}), num_devices=1)
  with pytest.raises(ConfigError, match="paitence.*did you mean 'patience'"):
    config_lib.validate(_with(config, **{"schedule.plateau.paitence": 2}), num_devices=1)
  with pytest.raises(ConfigError, match="optimiser.*did you mean 'optimizer'"):
    config_lib.validate(dict(config, optimiser={}), num_devices=1)
  with pytest.raises(ConfigError, match="run.seed' is missing"):
    config_lib.validate(dict(config, run={k: v for k, v in config["run"].items() if k != "seed"}),
                        num_devices=1)
  with pytest.raises(ConfigError, match="run.batch_size must be of type int"):
    config_lib.validate(_with(config, **{"run.batch_size": 64.0}), num_devices=1)
  with pytest.raises(ConfigError, match="optimizer.nesterov must be of type bool"):
    config_lib.validate(_with(config, **{"optimizer.nesterov": 1}), num_devices=1)
  with pytest.raises(ConfigError, match="config.optimizer must be a group"):
    config_lib.validate(dict(config, optimizer="sgd"), num_devices=1)


def test_a_flat_config_is_refused_with_the_new_names():
  config = get_recipe("quickstart").to_dict()
  with pytest.raises(ConfigError, match="config.learning_rate is now config.optimizer.learning_rate"):
    config_lib.validate(dict(config, learning_rate=0.1), num_devices=1)
  with pytest.raises(ConfigError, match="device_preprocessing was removed; use config.input.boundary"):
    config_lib.validate(dict(config, device_preprocessing="on"), num_devices=1)


def test_validated_settings_never_change():
  settings = config_lib.validate(get_recipe("quickstart"), num_devices=1)
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.optimizer.learning_rate = 1.0
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.run = None
  with pytest.raises(TypeError):
    settings.model.kwargs["width_multiplier"] = 2.0  # free-form dicts are read-only too
  assert settings.optimizer.learning_rate == 0.1 and settings.schedule.name == "warmup_cosine"


def test_every_setting_has_one_default_and_the_base_config_holds_them():
  base_config = base.get_base_config().to_dict()
  as_json = lambda tree: json.loads(json.dumps(tree, default=list))  # noqa: E731
  assert as_json(base_config) == as_json(config_lib.defaults())
  assert set(base_config) == {"model", "input", "optimizer", "schedule", "loss", "eval",
                              "checkpoint", "run"}
  assert set(base_config["schedule"]["plateau"]) == {"patience", "rtol", "max_reductions",
                                                      "factor"}


def test_bn_group_size_has_one_home():
  config = get_recipe("quickstart").to_dict()
  config = _with(config, **{"model.kwargs": {"bn_group_size": 8}})
  with pytest.raises(ConfigError, match="model.kwargs.bn_group_size=8.*config.model.bn_group_size"):
    config_lib.validate(config, num_devices=1, model_names=_model_names())


def test_batch_must_divide_over_devices():
  config = get_recipe("quickstart").to_dict()
  config_lib.validate(_with(config, **{"run.batch_size": 64}), num_devices=8)
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    config_lib.validate(_with(config, **{"run.batch_size": 60}), num_devices=8)
  with pytest.raises(ConfigError, match="eval.batch_size"):
    config_lib.validate(_with(config, **{"run.batch_size": 64, "eval.batch_size": 100}),
                        num_devices=8)
  with pytest.raises(ConfigError, match="per-device batch 8"):
    config_lib.validate(_with(config, **{"run.batch_size": 64, "model.bn_group_size": 3}),
                        num_devices=8)


def test_recipe_requirements():
  config = get_recipe("quickstart").to_dict()
  with pytest.raises(ConfigError, match="multistep"):
    config_lib.validate(_with(config, **{"schedule.name": "multistep"}), num_devices=1)
  with pytest.raises(ConfigError, match="plateau"):
    config_lib.validate(_with(config, **{"schedule.name": "plateau", "eval.every_steps": -1}),
                        num_devices=1)
  with pytest.raises(ConfigError, match="no length"):
    config_lib.validate(_with(config, **{"run.num_steps": -1, "run.num_epochs": -1.0}),
                        num_devices=1)
  with pytest.raises(ConfigError, match="init_from"):
    config_lib.validate(_with(config, **{"model.init_from": "/somewhere"}), num_devices=1)


def test_durations_beyond_int32_steps_are_refused():
  with pytest.raises(ConfigError, match="config.schedule.warmup_epochs"):
    to_steps(-1, 1e9, steps_per_epoch=100, name="schedule.warmup")


def test_durations_convert_in_one_place():
  assert to_steps(-1, 90.0, steps_per_epoch=5004, name="run.num") == 90 * 5004
  # steps win, so command-line overrides shorten any recipe
  assert to_steps(100, 90.0, steps_per_epoch=5004, name="run.num") == 100
  assert to_steps(-1, -1.0, steps_per_epoch=10, name="schedule.warmup", default=0) == 0
  assert to_steps(-1, 0.5, steps_per_epoch=10, name="schedule.warmup") == 5
  assert boundaries_to_steps((), (30.0, 60.0), 100, name="b") == (3000, 6000)
  assert boundaries_to_steps((7, 9), (30.0, 60.0), 100, name="b") == (7, 9)
