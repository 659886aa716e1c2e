"""Config validation, before anything is compiled or read.

`validate` checks that every key is one `cnnjax/configs/base.py` declares,
with that key's type, and that the enumerated keys hold allowed values. Errors are `ConfigError`s that
name the key, what was given and what is allowed.

Durations are converted by `cnnjax.train.durations`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from cnnjax.configs import base
from cnnjax.errors import CnnjaxError, ConfigError, close_matches

_NUMBER_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), tuple: (tuple, list)}


def as_plain_dict(config: Any) -> dict[str, Any]:
  """A ConfigDict (or mapping) as nested plain dicts, JSON-serialisable."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(dict(config), default=list))


class RunConfig(dict):
  """A validated config as the run holds it: a plain dict with attribute access.

  ml_collections stays with the config files and the command line; a run
  (and a machine without ml_collections, such as a bare accelerator image)
  takes any mapping with the keys of `base.default_values()`.
  """

  def __init__(self, config: Any):
    super().__init__(as_plain_dict(config))

  def __getattr__(self, key: str) -> Any:
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  def __setattr__(self, key: str, value: Any) -> None:
    if key not in self:
      raise ConfigError(f"unknown config key {key!r}: {close_matches(key, self)}")
    self[key] = value

  def to_dict(self) -> dict[str, Any]:
    return as_plain_dict(dict(self))

  def to_json(self, **kwargs: Any) -> str:
    return json.dumps(self.to_dict(), **kwargs)


def _type_name(value: Any) -> str:
  return type(value).__name__


def _check_type(key: str, value: Any, default: Any) -> None:
  expected = type(default)
  if expected is bool or isinstance(value, bool):
    ok = isinstance(value, bool) and expected is bool
  elif isinstance(default, Mapping) or hasattr(default, "to_dict"):
    ok = isinstance(value, Mapping) or hasattr(value, "to_dict")
  else:
    ok = isinstance(value, _NUMBER_TYPES.get(expected, (expected,)))
  if not ok:
    raise ConfigError(
        f"config.{key} must be of type {expected.__name__} (default {default!r}), "
        f"got {_type_name(value)} {value!r}")


INT32_RANGE = (-2**31, 2**31 - 1)
SEED_RANGE = (0, 2**32 - 1)  # JAX keys hold 32 bits: a larger seed would wrap around


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(key: str, value: Any, default: Any) -> None:
  """Integers fit the int32 counters of the compiled step; floats are finite."""
  if isinstance(default, bool) or not _is_number(value):
    return
  if isinstance(default, int):
    low, high = SEED_RANGE if key == "seed" else INT32_RANGE
    if not low <= value <= high:
      raise ConfigError(f"config.{key}={value} is outside [{low}, {high}]")
  elif not math.isfinite(value):
    raise ConfigError(f"config.{key}={value!r} must be a finite number")


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
  if not condition:
    raise ConfigError(f"config.{key}={value!r} is not allowed: {allowed}")


def validate(config: Any, *, num_devices: int | None = None,
             model_names: list[str] | None = None) -> None:
  """Raises ConfigError for any unknown key, wrong type or bad value.

  Args:
    config: a ConfigDict or mapping with the keys of `base.default_values()`.
    num_devices: the global device count; the batch size must divide by it.
    model_names: the registry's names (checked when given).
  """
  reference = base.default_values()
  given = as_plain_dict(config)
  known = set(reference.keys())
  for key in given:
    if key not in known:
      raise ConfigError(f"unknown config key {key!r}: {close_matches(key, known)}")
  for key in known:
    if key not in given:
      raise ConfigError(
          f"config key {key!r} is missing; start recipes from "
          "cnnjax.configs.base.get_base_config()")
  for key, value in given.items():
    _check_type(key, value, reference[key])
    _check_range(key, value, reference[key])

  if given["dtype"] == "float16":
    # float16 gradients underflow without loss scaling, which the train step does
    # not do; bfloat16 has float32's exponent range and needs none.
    raise ConfigError(
        "config.dtype='float16' is not supported: float16 training needs loss scaling, which "
        "cnnjax does not do. Use config.dtype='bfloat16' (same speed on current GPUs and TPUs, "
        "float32's range, no loss scaling) or 'float32'")
  for key, allowed in base.CHOICES.items():
    if given[key] not in allowed:
      raise ConfigError(
          f"config.{key}={given[key]!r} is not one of {allowed}: "
          f"{close_matches(str(given[key]), allowed)}")
  if model_names is not None and given["model"] not in model_names:
    raise ConfigError(
        f"config.model={given['model']!r} is not a registered model: "
        f"{close_matches(given['model'], model_names)}")

  c = given
  _require(c["batch_size"] >= 1, "batch_size", c["batch_size"], "a positive integer")
  if num_devices is not None and c["batch_size"] % num_devices:
    raise ConfigError(
        f"config.batch_size={c['batch_size']} is not divisible by the {num_devices} "
        f"devices: use a multiple of {num_devices} (e.g. "
        f"{max(num_devices, c['batch_size'] // num_devices * num_devices)})")
  _require(c["eval_batch_size"] >= 0, "eval_batch_size", c["eval_batch_size"],
           "0 (same as batch_size) or a positive integer")
  eval_batch = c["eval_batch_size"] or c["batch_size"]
  if num_devices is not None and eval_batch % num_devices:
    raise ConfigError(
        f"config.eval_batch_size={eval_batch} is not divisible by the {num_devices} devices")
  if c["num_steps"] < 0 and c["num_epochs"] <= 0:
    raise ConfigError(
        "the run has no length: set config.num_steps (>= 0) or config.num_epochs (> 0)")
  for name in base.DURATIONS:
    steps, epochs = c[f"{name}_steps"], c[f"{name}_epochs"]
    _require(steps >= -1, f"{name}_steps", steps, "-1 (unset) or >= 0")
    _require(epochs == -1 or epochs >= 0, f"{name}_epochs", epochs, "-1 (unset) or >= 0")
  boundaries = list(c["lr_boundaries_steps"])
  _require(all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT32_RANGE[1]
               for v in boundaries), "lr_boundaries_steps", boundaries, "positive integers")
  for key in ("lr_boundaries_steps", "lr_boundaries_epochs"):
    values = list(c[key])
    _require(all(_is_number(v) and math.isfinite(v) and v > 0 for v in values), key, values,
             "positive numbers")
    _require(values == sorted(values), key, values, "increasing boundaries")
  _require(c["learning_rate"] > 0, "learning_rate", c["learning_rate"], "> 0")
  _require(c["lr_base_batch_size"] >= 1, "lr_base_batch_size", c["lr_base_batch_size"], ">= 1")
  _require(0 <= c["momentum"] < 1, "momentum", c["momentum"], "0 <= momentum < 1")
  _require(c["weight_decay"] >= 0, "weight_decay", c["weight_decay"], ">= 0")
  _require(c["grad_clip_norm"] >= 0, "grad_clip_norm", c["grad_clip_norm"], ">= 0 (0: off)")
  _require(0 < c["lr_decay_factor"] < 1 or c["schedule"] in ("constant", "warmup_cosine"),
           "lr_decay_factor", c["lr_decay_factor"], "0 < factor < 1")
  if c["schedule"] == "multistep":
    _require(bool(c["lr_boundaries_steps"] or c["lr_boundaries_epochs"]),
             "lr_boundaries_steps", c["lr_boundaries_steps"],
             "schedule 'multistep' needs lr_boundaries_steps or lr_boundaries_epochs")
  if c["schedule"] == "exponential":
    _require(c["lr_decay_every_steps"] > 0 or c["lr_decay_every_epochs"] > 0,
             "lr_decay_every_steps", c["lr_decay_every_steps"],
             "schedule 'exponential' needs lr_decay_every_steps or lr_decay_every_epochs > 0")
  if c["schedule"] == "plateau":
    _require(c["eval_every_steps"] > 0 or c["eval_every_epochs"] > 0,
             "eval_every_steps", c["eval_every_steps"],
             "schedule 'plateau' follows the validation error: set eval_every_steps "
             "or eval_every_epochs > 0")
  _require(c["plateau_patience"] >= 1, "plateau_patience", c["plateau_patience"], ">= 1")
  _require(0 < c["plateau_rtol"] < 1, "plateau_rtol", c["plateau_rtol"], "0 < rtol < 1")
  _require(c["plateau_max_reductions"] >= 0, "plateau_max_reductions",
           c["plateau_max_reductions"], ">= 0")
  _require(0 <= c["error_warmup_factor"] <= 1, "error_warmup_factor",
           c["error_warmup_factor"], "0 (off) .. 1")
  _require(0 < c["error_warmup_threshold"] <= 1, "error_warmup_threshold",
           c["error_warmup_threshold"], "0 < threshold <= 1")
  _require(0 <= c["ema_decay"] < 1, "ema_decay", c["ema_decay"], "0 (off) <= decay < 1")
  _require(0 <= c["label_smoothing"] < 1, "label_smoothing", c["label_smoothing"], "0 <= x < 1")
  _require(c["aux_loss_weight"] >= 0, "aux_loss_weight", c["aux_loss_weight"], ">= 0")
  _require(c["num_classes"] >= 0, "num_classes", c["num_classes"], "0 (the dataset's) or > 0")
  _require(c["image_size"] >= 0, "image_size", c["image_size"], "0 (default) or > 0")
  _require(c["eval_num_batches"] >= 0, "eval_num_batches", c["eval_num_batches"], ">= 0")
  _require(c["bn_group_size"] >= -1, "bn_group_size", c["bn_group_size"],
           "0 (per-device batch), -1 (synchronised over the global batch) or n > 0")
  _require("bn_group_size" not in c["model_kwargs"], "model_kwargs.bn_group_size",
           c["model_kwargs"].get("bn_group_size"),
           "unset: the run's BatchNorm groups are config.bn_group_size (0, -1 or n > 0)")
  if c["bn_group_size"] > 0:
    per_device = c["batch_size"] // (num_devices or 1)
    _require(per_device % c["bn_group_size"] == 0, "bn_group_size", c["bn_group_size"],
             f"must divide the per-device batch {per_device}")
  _require(c["log_every_steps"] >= 1, "log_every_steps", c["log_every_steps"], ">= 1")
  _require(c["prefetch_batches"] >= 1, "prefetch_batches", c["prefetch_batches"],
           ">= 1 (batches on the devices ahead of the step)")
  _require(c["max_resolution"] == 0 or c["max_resolution"] >= 32, "max_resolution",
           c["max_resolution"], "0 (the original images) or >= 32 (the longer side of a copy)")
  if c["input_boundary"] == "dali":
    _require(c["max_resolution"] == 0, "max_resolution", c["max_resolution"],
             "0 with input_boundary='dali' (DALI decodes on the GPU; the bounded copy is the "
             "host pipeline's way to decode less)")
  _require(c["keep_checkpoints"] >= 1, "keep_checkpoints", c["keep_checkpoints"], ">= 1")
  _require(c["seed"] >= 0, "seed", c["seed"], ">= 0")
  profile = list(c["profile_steps"])
  _require(not profile or (len(profile) == 2 and all(_is_number(s) and isinstance(s, int)
                                                     for s in profile)
                           and 0 <= profile[0] <= profile[1]),
           "profile_steps", profile, "() or (first_step, last_step)")
  if c["init_from"]:  # another run's workdir or published weights
    check_init_from_source(c)


def init_from_weights(source: str) -> tuple[str, str | None] | None:
  """(weights source, file or None) when config.init_from names published weights
  ("torchvision/resnet50.IMAGENET1K_V2", "keras/vgg16:/path/vgg16.h5"), else None."""
  from cnnjax.weights import catalogue  # pylint: disable=import-outside-toplevel
  name, _, path = source.partition(":")
  if name.split("/", 1)[0] not in catalogue.ORIGINS or os.path.isdir(source):
    return None
  catalogue.get_source(name)  # ModelError with close matches for a misspelt name
  return name, path or None


def check_init_from_source(config: Mapping[str, Any]) -> None:
  """ConfigError unless config.init_from is empty, a directory or a weights source name."""
  source = config["init_from"]
  if not source or os.path.isdir(source):
    return
  try:
    weights = init_from_weights(source)
  except CnnjaxError as error:
    raise ConfigError(f"config.init_from={source!r}: {error}") from error
  if weights is None:
    raise ConfigError(
        f"config.init_from={source!r} does not exist: pass the --workdir of a trained run, or "
        f"published weights such as 'torchvision/resnet50.IMAGENET1K_V2' or "
        f"'keras/vgg16:/path/to/vgg16.h5' (cnnjax.weights.list_weights())")
  if weights[1] is not None and not os.path.exists(weights[1]):
    raise ConfigError(f"config.init_from={source!r}: the weights file {weights[1]!r} does not exist")
