"""A run's settings: one frozen tree of subtrees, checked before anything is compiled.

    settings = validate(config)   # a ConfigDict or nested mapping -> Settings
    settings.optimizer.learning_rate, settings.input.dataset, ...

Each subtree is a frozen dataclass owned by the code that reads it, with
its defaults, a comment per field and its own checks:

  model       ModelSettings        cnnjax.train.setup
  input       InputSettings        cnnjax.train.inputs
  optimizer   OptimizerSettings    cnnjax.train.optim
  schedule    ScheduleSettings     cnnjax.train.optim (one subtree per schedule)
  loss        LossSettings         cnnjax.train.setup
  eval        EvalSettings         cnnjax.train.inputs
  checkpoint  CheckpointSettings   here (the loop's)
  run         RunSettings          here (the loop's)

`validate` checks names (a misspelt one, at any level, gets the close
matches), types, ranges and choices, then what spans subtrees (the batch
and the devices, plateau and validation); errors are `ConfigError`s naming
`config.<subtree>.<key>`. The result never changes; values found at run
time (image size, classes, steps) live in `cnnjax.train.loop.RunFacts`.

A config.json written while the settings were one flat dict still loads:
`FLAT_TO_NESTED` maps each old name to its place (`from_flat`); names that
had been removed before (`REMOVED_KEYS`) are refused with their replacement.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from cnnjax.errors import CnnjaxError, ConfigError, close_matches
from cnnjax.train import checks, durations
from cnnjax.train.checks import require
from cnnjax.train.inputs import EvalSettings, InputSettings
from cnnjax.train.optim import OptimizerSettings, ScheduleSettings
from cnnjax.train.setup import LossSettings, ModelSettings


@dataclasses.dataclass(frozen=True)
class CheckpointSettings(checks.Section):
  """config.checkpoint: when the loop saves, and how many it keeps."""

  every_steps: int = -1  # -1 with every_epochs -1: only at the end
  every_epochs: float = -1.0
  keep: int = 3  # latest N; the best by validation error is kept besides

  def check(self) -> None:
    durations.check_pair(self.every_steps, self.every_epochs, "checkpoint.every")
    require(self.keep >= 1, "checkpoint.keep", self.keep, ">= 1")


@dataclasses.dataclass(frozen=True)
class RunSettings(checks.Section):
  """config.run: the run as a whole: seed, global batch, length, logging."""

  seed: int = 0
  batch_size: int = 128  # global, over every device of every process
  num_steps: int = -1  # the length: steps win over epochs (see cnnjax.train.durations)
  num_epochs: float = -1.0
  log_every_steps: int = 50
  profile_steps: tuple = ()  # (first, last): trace these steps with jax.profiler (<workdir>/profile)
  compilation_cache_dir: str = ""  # "": $CNNJAX_COMPILATION_CACHE_DIR or ~/.cache/cnnjax/jax
  progress_bar: bool = True

  def check(self) -> None:
    require(self.batch_size >= 1, "run.batch_size", self.batch_size, "a positive integer")
    if self.num_steps < 0 and self.num_epochs <= 0:
      raise ConfigError("the run has no length: set config.run.num_steps (>= 0) or "
                        "config.run.num_epochs (> 0)")
    durations.check_pair(self.num_steps, self.num_epochs, "run.num")
    require(self.log_every_steps >= 1, "run.log_every_steps", self.log_every_steps, ">= 1")
    require(self.seed >= 0, "run.seed", self.seed, ">= 0")
    profile = list(self.profile_steps)
    require(not profile or (len(profile) == 2 and all(
        checks.is_number(s) and isinstance(s, int) for s in profile)
                            and 0 <= profile[0] <= profile[1]),
            "run.profile_steps", profile, "() or (first_step, last_step)")


@dataclasses.dataclass(frozen=True)
class Settings(checks.Section):
  """Every setting of a run, by subsystem (what `validate` returns)."""

  model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
  input: InputSettings = dataclasses.field(default_factory=InputSettings)
  optimizer: OptimizerSettings = dataclasses.field(default_factory=OptimizerSettings)
  schedule: ScheduleSettings = dataclasses.field(default_factory=ScheduleSettings)
  loss: LossSettings = dataclasses.field(default_factory=LossSettings)
  eval: EvalSettings = dataclasses.field(default_factory=EvalSettings)
  checkpoint: CheckpointSettings = dataclasses.field(default_factory=CheckpointSettings)
  run: RunSettings = dataclasses.field(default_factory=RunSettings)

  def check(self) -> None:
    if self.schedule.name == "plateau":
      require(self.eval.every_steps > 0 or self.eval.every_epochs > 0, "eval.every_steps",
              self.eval.every_steps, "schedule 'plateau' follows the validation error: set "
              "eval.every_steps or eval.every_epochs > 0")

  def to_dict(self) -> dict[str, Any]:
    """Nested plain dicts, JSON-serialisable (config.json)."""
    return checks.to_dict(self)

  def resolved(self, *, image_size: int, num_classes: int) -> Settings:
    """A copy with the run's image size and classes in place of their 0 defaults:
    what config.json records, so evaluation rebuilds the same network and input."""
    return dataclasses.replace(
        self, model=dataclasses.replace(self.model, num_classes=int(num_classes)),
        input=dataclasses.replace(self.input, image_size=int(image_size)))


def defaults() -> dict[str, Any]:
  """Every setting with its default, as nested plain dicts."""
  return checks.defaults(Settings)


# Settings whose value is a free-form dict forwarded to another module.
FREE_FORM = ("model.kwargs", "input.augment_kwargs", "eval.view_kwargs")


def validate(config: Any, *, num_devices: int | None = None,
             model_names: list[str] | None = None) -> Settings:
  """The frozen `Settings` of `config`; ConfigError for any unknown key, wrong type or value.

  Args:
    config: a ConfigDict or nested mapping with the subtrees of `Settings`
      (`cnnjax.configs.base.get_base_config()`); a flat mapping of the old
      layout is refused with the nested name of each key.
    num_devices: the global device count; the batch sizes must divide by it.
    model_names: the registry's names (checked when given).
  """
  given = checks.plain(config) if checks.is_mapping(config) else config
  if checks.is_mapping(given):
    _refuse_flat(given)
  settings = checks.build(Settings, given, "", strict=True)
  if model_names is not None and settings.model.name not in model_names:
    raise ConfigError(f"config.model.name={settings.model.name!r} is not a registered model: "
                      f"{close_matches(settings.model.name, model_names)}")
  batch = settings.run.batch_size
  if num_devices is not None and batch % num_devices:
    raise ConfigError(
        f"config.run.batch_size={batch} is not divisible by the {num_devices} devices: use a "
        f"multiple of {num_devices} (e.g. {max(num_devices, batch // num_devices * num_devices)})")
  eval_batch = settings.eval.global_batch(batch)
  if num_devices is not None and eval_batch % num_devices:
    raise ConfigError(
        f"config.eval.batch_size={eval_batch} is not divisible by the {num_devices} devices")
  settings.model.check_batch(batch, num_devices)
  # another run's workdir or published weights (a stored config's source may be gone since)
  check_init_from_source(settings.model.init_from)
  return settings


# ------------------------------------------------------------ the old flat layout

# Each name of the flat layout (one dict of 62 keys, until the settings were
# grouped) -> its place in the tree. lr_decay_factor went to every schedule
# that has a factor.
FLAT_TO_NESTED: dict[str, tuple[str, ...]] = {
    "model": ("model.name",), "model_kwargs": ("model.kwargs",),
    "num_classes": ("model.num_classes",), "dtype": ("model.dtype",),
    "bn_group_size": ("model.bn_group_size",), "init_from": ("model.init_from",),
    "cpu_kernels": ("model.cpu_kernels",),
    **{key: (f"input.{key}",) for key in (
        "dataset", "data_dir", "train_split", "eval_split", "image_size", "normalize", "augment",
        "augment_kwargs", "max_resolution", "on_bad_image", "prefetch_batches")},
    "input_boundary": ("input.boundary",),
    "optimizer": ("optimizer.name",),
    **{key: (f"optimizer.{key}",) for key in (
        "learning_rate", "lr_scaling", "lr_base_batch_size", "momentum", "nesterov",
        "weight_decay", "weight_decay_mask", "grad_clip_norm", "ema_decay")},
    "schedule": ("schedule.name",),
    "warmup_steps": ("schedule.warmup_steps",), "warmup_epochs": ("schedule.warmup_epochs",),
    "lr_decay_factor": ("schedule.multistep.factor", "schedule.plateau.factor",
                        "schedule.exponential.factor"),
    "lr_boundaries_steps": ("schedule.multistep.boundaries_steps",),
    "lr_boundaries_epochs": ("schedule.multistep.boundaries_epochs",),
    "lr_decay_every_steps": ("schedule.exponential.every_steps",),
    "lr_decay_every_epochs": ("schedule.exponential.every_epochs",),
    "plateau_patience": ("schedule.plateau.patience",),
    "plateau_rtol": ("schedule.plateau.rtol",),
    "plateau_max_reductions": ("schedule.plateau.max_reductions",),
    "error_warmup_factor": ("schedule.error_warmup.factor",),
    "error_warmup_threshold": ("schedule.error_warmup.threshold",),
    "loss": ("loss.name",), "label_smoothing": ("loss.label_smoothing",),
    "aux_loss_weight": ("loss.aux_weight",),
    "eval_view": ("eval.view",), "eval_view_kwargs": ("eval.view_kwargs",),
    "eval_batch_size": ("eval.batch_size",), "eval_num_batches": ("eval.num_batches",),
    "eval_every_steps": ("eval.every_steps",), "eval_every_epochs": ("eval.every_epochs",),
    "checkpoint_every_steps": ("checkpoint.every_steps",),
    "checkpoint_every_epochs": ("checkpoint.every_epochs",),
    "keep_checkpoints": ("checkpoint.keep",),
    **{key: (f"run.{key}",) for key in (
        "seed", "batch_size", "num_steps", "num_epochs", "log_every_steps", "profile_steps",
        "compilation_cache_dir", "progress_bar")},
}

# Names removed before the settings were grouped -> what replaces them.
REMOVED_KEYS = {
    "device_preprocessing": "input.boundary ('uint8' ships uint8 to the device, 'float32' "
                            "finishes on the host, 'auto' chooses)",
    "input_pipeline": "input.boundary ('dali' decodes with DALI; the others use tf.data)",
    "zero_init_residual": "model.kwargs residual_scale_init (0.0 is torchvision's "
                          "zero_init_residual=True)",
}


def _refuse_flat(given: Mapping[str, Any]) -> None:
  """A flat key where a subtree is expected: ConfigError with its new place."""
  tree = set(defaults())
  for key in given:
    if key in REMOVED_KEYS:
      raise ConfigError(f"config.{key} was removed; use config.{REMOVED_KEYS[key]}")
    if key not in tree and key in FLAT_TO_NESTED:
      raise ConfigError(f"config.{key} is now config.{' and config.'.join(FLAT_TO_NESTED[key])} "
                        "(the settings are grouped by subsystem: docs/training.md)")


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  for name in parents:
    tree = tree.setdefault(name, {})
  tree[leaf] = value


def _get_path(tree: Mapping[str, Any], path: str) -> Any:
  for name in path.split("."):
    tree = tree[name]
  return tree


def from_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
  """A config of the flat layout as the nested tree (keys it lacks are left out)."""
  nested: dict[str, Any] = {}
  for key, value in checks.plain(flat).items():
    if key in REMOVED_KEYS:
      raise ConfigError(f"config.{key} was removed; use config.{REMOVED_KEYS[key]}")
    if key not in FLAT_TO_NESTED:
      raise checks.unknown_key("", key, FLAT_TO_NESTED)
    for path in FLAT_TO_NESTED[key]:
      _set_path(nested, path, value)
  return nested


def to_flat(settings: Settings | Mapping[str, Any]) -> dict[str, Any]:
  """The settings under the flat layout's names (lr_decay_factor: the schedule's own,
  or multistep's for a schedule without one)."""
  tree = settings.to_dict() if isinstance(settings, Settings) else checks.plain(settings)
  flat = {}
  for key, paths in FLAT_TO_NESTED.items():
    chosen = [p for p in paths if p.startswith(f"schedule.{tree['schedule']['name']}.")]
    flat[key] = _get_path(tree, (chosen or paths)[0])
  return checks.plain(flat)


def is_flat(stored: Mapping[str, Any]) -> bool:
  """Whether a stored config uses the flat layout (e.g. a string under "model")."""
  return isinstance(stored.get("model"), str) or any(
      key in FLAT_TO_NESTED and key not in Settings.__dataclass_fields__ for key in stored)


def load(stored: Mapping[str, Any]) -> Settings:
  """The Settings of a workdir's config.json, of either layout; settings a version
  before had not yet take their defaults."""
  nested = from_flat(stored) if is_flat(stored) else stored
  return checks.build(Settings, nested, "", strict=False)


# ------------------------------------------------------------ warm-start sources


def init_from_weights(source: str) -> tuple[str, str | None] | None:
  """(weights source, file or None) when config.model.init_from names published weights
  ("torchvision/resnet50.IMAGENET1K_V2", "keras/vgg16:/path/vgg16.h5"), else None."""
  from cnnjax.weights import catalogue  # pylint: disable=import-outside-toplevel
  name, _, path = source.partition(":")
  if name.split("/", 1)[0] not in catalogue.ORIGINS or os.path.isdir(source):
    return None
  catalogue.get_source(name)  # ModelError with close matches for a misspelt name
  return name, path or None


def check_init_from_source(source: str) -> None:
  """ConfigError unless `source` (config.model.init_from) is empty, a directory or a
  weights source name."""
  if not source or os.path.isdir(source):
    return
  try:
    weights = init_from_weights(source)
  except CnnjaxError as error:
    raise ConfigError(f"config.model.init_from={source!r}: {error}") from error
  if weights is None:
    raise ConfigError(
        f"config.model.init_from={source!r} does not exist: pass the --workdir of a trained run, "
        f"or published weights such as 'torchvision/resnet50.IMAGENET1K_V2' or "
        f"'keras/vgg16:/path/to/vgg16.h5' (cnnjax.weights.list_weights())")
  if weights[1] is not None and not os.path.exists(weights[1]):
    raise ConfigError(
        f"config.model.init_from={source!r}: the weights file {weights[1]!r} does not exist")
