"""Ensembles and test-time views: `evaluate(members, data, view=...)`.

See the package docstring (cnnjax/evaluate/__init__.py) for the views and
the command line.

Dense evaluation ("dense_multiscale", VGG Sec. 3.2, ResNet Sec. 4) runs the
net over the whole image rescaled to shorter side Q, never a centre square:
on datasets of varying image sizes each image is its own batch
(`cnnjax.data.views.whole_image_batches`), so padding never enters the
score map's spatial average (a padded batch would need the models to mask
every layer: zero padding changes the convolutions at the image border).
Cost: one compilation of the scoring step per distinct image shape and
scale set. Measured 2026-12-04 on the 2-core AMD EPYC CPU (shared), a
narrow CIFAR ResNet at scales (64, 96), 16 images: one shape 1.4 s warm
(4.4 s with its compile), 16 shapes 18.6 s, i.e. ~1.1 s per new shape,
paid once per distinct shape of the evaluated set.
"150crop" is VGG's multi-crop (a 5x5 grid of crops and mirrors at each of
three scales, cnnjax.data.views.grid_crops_op) and "dense+150crop" the
average of the dense and the multi-crop posteriors (VGG Table 5: E 24.4 /
7.1 top-1 / top-5 against 24.8 / 7.5 dense alone).
Images already at the network's size (CIFAR, digits) keep that size: see
cnnjax.data.views.
"""


from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cnnjax import logs
from cnnjax.errors import ConfigError, DataError, ModelError, close_matches
from cnnjax import scoring
from cnnjax.scoring.metrics import averages_from_sums
from cnnjax.scoring.views import (  # noqa: F401  (VIEWS, DATA_VIEWS, predict_views: re-exported)
    DATA_VIEWS, DENSE_VIEWS, VIEWS, check_layout, predict_views)

# ResNet paper, Table 3 footnote / Section 3.4: fully-convolutional test scales.
GOOGLENET_SCALES = (256, 288, 320, 352)  # the 144-crop scales, for 224 crops
REFERENCE_SIZE = 224  # the papers' crop; scales are given for it
# Images per device per step when --batch_size is not given.
DEFAULT_IMAGES_PER_DEVICE = 64


# ----------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
  """One network of an ensemble: module, variables and where they came from.

  `config` is the training settings as nested plain dicts (a workdir's
  config.json: {"model": {...}, "input": {...}, ...}) when the member was
  restored from a workdir or made from published weights; its "input"
  subtree supplies the data settings (dataset, normalisation, image size)
  and the dense-evaluation scales, its "model" subtree the network's name.
  """

  model: nn.Module
  variables: Any
  name: str = "model"
  config: Mapping[str, Any] | None = None

  @property
  def num_classes(self) -> int:
    return int(self.model.num_classes)


def load_member(workdir: str, *, which: str = "latest", use_ema: bool | None = None) -> Member:
  """A trained workdir as an ensemble member.

  Args:
    which: "latest" checkpoint or the "best" by validation error.
    use_ema: evaluate the Polyak/EMA parameters; None (default) uses them
      whenever the run kept them (config.optimizer.ema_decay > 0).
  """
  from cnnjax.train import checkpoint  # pylint: disable=import-outside-toplevel
  if use_ema is None:
    use_ema = checkpoint.read_settings(workdir).optimizer.ema_decay > 0.0
  settings, model, variables = checkpoint.restore_for_eval(workdir, which=which, use_ema=use_ema)
  plain = settings.to_dict()
  name = os.path.basename(os.path.normpath(workdir)) + (" (EMA)" if use_ema else "")
  return Member(model=model, variables=variables, name=name, config=plain)


def _as_member(item: Any, index: int) -> Member:
  if isinstance(item, Member):
    return item
  if isinstance(item, (tuple, list)) and len(item) == 2:
    return Member(model=item[0], variables=item[1], name=f"model {index + 1}")
  raise ModelError(
      f"ensemble member {index + 1} is a {type(item).__name__}; pass evaluate.Member "
      "objects, (model, variables) pairs, or workdirs through load_member.")


def check_ensemble(members: Sequence[Member]) -> None:
  """Members must predict the same classes (softmax averages need one label space)."""
  if not members:
    raise ModelError("evaluate needs at least one model (an ensemble of zero is undefined).")
  counts = {member.name: member.num_classes for member in members}
  if len(set(counts.values())) > 1:
    listing = ", ".join(f"{name!r}: {count}" for name, count in counts.items())
    raise ModelError(
        f"ensemble members predict different numbers of classes ({listing}); their softmax "
        "outputs cannot be averaged. Ensemble checkpoints trained on the same dataset.")


# ---------------------------------------------------------- view and model


def _subtree(config: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
  """One subtree ("model", "input") of a member's training settings; {} without them."""
  return (config or {}).get(name) or {}


def _spec(model: nn.Module, name: str | None = None):
  """The registry's spec of a member's network (its family's evaluation hooks);
  name: config.model.name of its training, when known."""
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  if name in models.list_models():
    return models.get_spec(name)
  return models.registry.spec_of(model)


def model_for_view(model: nn.Module, view: str, name: str | None = None) -> nn.Module:
  """The module that evaluates `view`: for dense views the family's fully
  convolutional form (`ModelSpec.dense`: VGG's FC layers as convolutions).

  name: config.model.name of its training, when known.
  Raises ModelError for a view the architecture cannot take.
  """
  if view not in VIEWS:
    raise ConfigError(f"unknown view {view!r}; {close_matches(view, VIEWS)}")
  if view not in DENSE_VIEWS:
    return model
  from cnnjax import models  # pylint: disable=import-outside-toplevel
  return models.dense_form(model, name)


def dense_scales(model: nn.Module, input_settings: Mapping[str, Any] | None = None,
                 image_size: int | None = None, name: str | None = None) -> tuple[int, ...]:
  """The test scales Q of dense evaluation for this model and its training's
  config.input (`ModelSpec.dense_scales`: VGG {S-32, S, S+32} or {Smin,
  (Smin+Smax)/2, Smax}, ResNet {224, 256, 384, 480, 640}, both scaled with
  image_size / 224); name: config.model.name, when known."""
  input_settings = input_settings or {}
  image_size = int(image_size or input_settings.get("image_size") or REFERENCE_SIZE)
  model_for_view(model, "dense_multiscale", name)  # the named error for other families
  return tuple(_spec(model, name).dense_scales(input_settings, image_size))


def _view_scales(member: Member, view: str, image_size: int | None) -> tuple[int, ...]:
  """Scales Q of a dense or 150crop view: the family's dense scales (VGG's from
  its training S); for 150crop on other families VGG's (256, 384, 512) scaled
  with image_size / 224."""
  name = _subtree(member.config, "model").get("name")
  input_settings = _subtree(member.config, "input")
  if view == "150crop":
    spec = _spec(member.model, name)
    if spec is None or spec.dense is None:
      size = int(image_size or input_settings.get("image_size") or REFERENCE_SIZE)
      return tuple(int(round(q * size / REFERENCE_SIZE)) for q in (256, 384, 512))
  return dense_scales(member.model, input_settings, image_size, name)


def _make_step(models: Sequence[nn.Module], mesh, device_input=None):
  """Jitted: (variables of each model, global batch) -> summed errors per member and ensemble."""
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel

  def step(all_variables, batch):
    if device_input is not None:  # uint8 batches: normalised once, for every member
      batch = device_input.eval_batch(batch)
    scores = [scoring.view_scores(model.apply, variables, batch)
              for model, variables in zip(models, all_variables)]
    sums = lambda s: scoring.error_sums(s, batch["label"], batch["mask"])  # noqa: E731
    return {"members": [sums(s) for s in scores],
            "ensemble": sums(scoring.ensemble_scores(scores))}

  return jax.jit(step, out_shardings=sharding.replicated(mesh))


# ------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """How to read the evaluation data (from the members' training config)."""

  dataset: str
  data_dir: str | None = None
  split: str | None = None
  image_size: int | None = None
  normalize: str = "per_channel"
  stats_split: str | None = None


def data_settings(input_settings: Mapping[str, Any], **overrides: Any) -> DataSettings:
  """Dataset, split, image size and normalisation a training's config.input implies."""
  c = input_settings
  settings = DataSettings(
      dataset=c["dataset"], data_dir=c.get("data_dir") or None,
      split=c.get("eval_split") or None, image_size=c.get("image_size") or None,
      normalize=c.get("normalize", "per_channel"), stats_split=c.get("train_split") or None)
  return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _check_same_data(members: Sequence[Member]) -> None:
  """Members restored from workdirs must agree on how their inputs look."""
  configured = [m for m in members if m.config is not None]
  for key in ("dataset", "normalize", "image_size"):
    values = {m.name: _subtree(m.config, "input").get(key) for m in configured}
    if len(set(map(str, values.values()))) > 1:
      listing = ", ".join(f"{name!r}: {value!r}" for name, value in values.items())
      raise ConfigError(
          f"ensemble members were trained with different config.input.{key} ({listing}); one "
          "evaluation stream cannot feed them all. Evaluate them separately.")


def _default_batch_size(view: str, num_devices: int, view_kwargs: Mapping[str, Any]) -> int:
  views = {"center": 1, "10crop": 10, "dense_multiscale": 2 * 3, "144crop": 144,
           "150crop": 150, "dense+150crop": 156}[view]
  if view == "144crop" and "scales" in view_kwargs:
    views = 36 * len(view_kwargs["scales"])
  if view == "150crop" and "scales" in view_kwargs:
    views = 50 * len(view_kwargs["scales"])
  per_device = max(1, DEFAULT_IMAGES_PER_DEVICE // views)
  return per_device * num_devices


def evaluate(members: Sequence[Member | tuple[nn.Module, Any]],
             data: str | Iterable[Mapping[str, np.ndarray]] | DataSettings, *,
             view: str = "center", batch_size: int | None = None, split: str | None = None,
             data_dir: str | None = None, image_size: int | None = None,
             normalize: str | None = None, scales: Sequence[int] | None = None,
             progress: bool = True, mesh=None) -> dict[str, Any]:
  """Top-1/top-5 error of one model or an ensemble under a test-time view.

  Args:
    members: `Member`s (e.g. from `load_member`) or (model, variables) pairs.
    data: a dataset name for cnnjax.data.eval_iterator (settings from the
      first member's training config unless overridden here), a
      `DataSettings`, or an iterable of ready batches ({"image" or
      "image_q<Q>", "label", "mask"}, as eval_iterator yields them for the
      matching data view, with the global batch's rows).
    view: one of VIEWS.
    batch_size: global batch (examples, not images); default fills about
      64 images per device.
    scales: dense-evaluation scales Q (default: `dense_scales`).
    mesh: a 1-D 'data' mesh (default: every device); the batch is sharded
      over it, the variables replicated.

  Returns:
    {"view", "top1_error", "top5_error", "loss", "num_examples", "members":
     [{"name", "top1_error", ...}], ...} -- the top-level errors are the
     ensemble's (the only member's, for one model).
  """
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  members = [_as_member(item, index) for index, item in enumerate(members)]
  check_ensemble(members)
  _check_same_data(members)
  models = [model_for_view(member.model, view, _subtree(member.config, "model").get("name"))
            for member in members]
  mesh = mesh or sharding.make_mesh()
  num_devices = mesh.devices.size

  report: dict[str, Any] = {"view": view}
  view_kwargs: dict[str, Any] = {}
  if view in DENSE_VIEWS or view == "150crop":
    view_kwargs["scales"] = report["scales"] = _ensemble_scales(members, view, scales, image_size)

  batch_size = batch_size or _default_batch_size(view, num_devices, view_kwargs)
  if batch_size % num_devices:
    raise ConfigError(f"batch_size {batch_size} must be a multiple of the {num_devices} devices "
                      "it is sharded over.")
  total, device_input = None, None
  if isinstance(data, (str, DataSettings)):
    batches, total, device_input = _read_data(
        data, members[0], view, view_kwargs, batch_size, num_devices, report,
        auto_scales=not scales,
        **{k: v for k, v in {"split": split, "data_dir": data_dir, "image_size": image_size,
                             "normalize": normalize}.items() if v is not None})
  else:
    batches = data

  step = _make_step(models, mesh, device_input)
  variables = jax.device_put([member.variables for member in members],
                             sharding.replicated(mesh))
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    batches = tqdm(batches, total=total, desc=f"evaluate {view}", unit="batch",
                   disable=jax.process_index() != 0 or not logs.progress_bars_shown())
  checked = (check_layout(batch, view) or batch for batch in batches)
  totals = scoring.sum_over_batches(lambda batch: step(variables, batch), checked, mesh)

  report.update(averages_from_sums(totals["ensemble"]))
  report["members"] = [{"name": member.name, **averages_from_sums(member_sums)}
                       for member, member_sums in zip(members, totals["members"])]
  report["num_models"] = len(members)
  return report


def _ensemble_scales(members: Sequence[Member], view: str, scales: Sequence[int] | None,
                     image_size: int | None) -> list[int]:
  """The scales Q of a dense or 150-crop view: those given, else the ones every member implies."""
  implied = lambda m: _view_scales(m, view, image_size)  # noqa: E731
  chosen = tuple(scales) if scales else implied(members[0])
  for member in members[1:]:
    if not scales and implied(member) != chosen:
      raise ConfigError(
          f"ensemble members imply different dense scales ({chosen} for {members[0].name!r}, "
          f"{implied(member)} for {member.name!r}); "
          "pass scales= (--scales) to choose one set.")
  return list(chosen)


def _read_data(data: str | DataSettings, first: Member, view: str, view_kwargs: dict[str, Any],
               batch_size: int, num_devices: int, report: dict[str, Any], *, auto_scales: bool,
               **overrides: Any):
  """(batches, number of batches or None, DeviceInput or None) of a named dataset or
  DataSettings (overrides: split, data_dir, image_size, normalize); fills report's
  dataset, split and scales."""
  if isinstance(data, str):
    base = (data_settings(_subtree(first.config, "input"), dataset=data)
            if first.config else DataSettings(dataset=data))
  else:
    base = data
  settings = dataclasses.replace(base, **overrides)
  if view == "dense+150crop" or (view == "dense_multiscale" and not _native_side(settings)):
    # Images of many shapes: the whole image at each scale, one image per batch.
    batches, resolved_split, total = _whole_image_batches(
        settings, view_kwargs["scales"], num_devices,
        crop_scales=view_kwargs["scales"] if view == "dense+150crop" else None)
    device_input, used_kwargs = None, view_kwargs
    report["whole_images"] = True
  else:
    batches, resolved_split, total, device_input, used_kwargs = _eval_batches(
        settings, view, view_kwargs, batch_size, auto_scales=auto_scales,
        train_geometry=train_geometry(_subtree(first.config, "input")))
  report.update(dataset=settings.dataset, split=resolved_split)
  if "scales" in report:
    report["scales"] = list(used_kwargs.get("scales", [settings.image_size or _native_side(
        settings)]))
  return batches, total, device_input


def _whole_image_batches(settings: DataSettings, scales: Sequence[int], rows: int, *,
                         crop_scales: Sequence[int] | None = None):
  """(one-image batches of whole rescaled images, split, number of batches)."""
  from cnnjax import data  # pylint: disable=import-outside-toplevel
  from cnnjax.data import views  # pylint: disable=import-outside-toplevel
  info = data.dataset_info(settings.dataset, data_dir=settings.data_dir)
  split = settings.split or info.eval_split
  if split is None:
    raise DataError(f"dataset {settings.dataset!r} has no evaluation split; pass one "
                    f"(--split), e.g. one of {sorted(info.splits)}.")
  batches = views.whole_image_batches(
      settings.dataset, scales=scales, rows=rows, data_dir=settings.data_dir, split=split,
      normalize=settings.normalize, stats_split=settings.stats_split, crop_scales=crop_scales,
      image_size=settings.image_size or REFERENCE_SIZE)
  return batches, split, info.splits.get(split)


def train_geometry(input_settings: Mapping[str, Any] | None) -> dict[str, Any]:
  """The crops' padding and mirroring a run was trained with (from its config.input),
  for the views of images already at the network's size: the CIFAR preset's `pad`
  (4 by default), no padding for other presets; mirrors unless the run trained
  without flips (augment "none", or augment_kwargs flip=False). {} without a
  training config (the views' CIFAR defaults: pad 4, mirrors)."""
  if not input_settings:
    return {}
  augment = input_settings.get("augment", "none")
  options = dict(input_settings.get("augment_kwargs") or {})
  return {"pad": int(options.get("pad", 4)) if augment == "cifar" else 0,
          "flip": augment != "none" and bool(options.get("flip", True))}


def _native_side(settings: DataSettings) -> int | None:
  from cnnjax import data  # pylint: disable=import-outside-toplevel
  shape = data.dataset_info(settings.dataset, data_dir=settings.data_dir).image_shape
  return shape[0] if shape[0] and shape[0] == shape[1] else None


def _eval_batches(settings: DataSettings, view: str, view_kwargs: Mapping[str, Any],
                  batch_size: int, *, auto_scales: bool = True,
                  train_geometry: Mapping[str, Any] | None = None):
  """(eval_iterator for the settings, resolved split name, number of batches, the
  DeviceInput that finishes its uint8 batches on the device, and the view options used).

  Images already at the network's size keep it: the scales derived from the
  papers' 224-pixel ones (auto_scales) are dropped, and the data views crop
  them with the training geometry instead (see cnnjax.data.views).
  """
  import math  # pylint: disable=import-outside-toplevel

  from cnnjax import data  # pylint: disable=import-outside-toplevel
  info = data.dataset_info(settings.dataset, data_dir=settings.data_dir)
  split = settings.split or info.eval_split
  if split is None:
    raise DataError(f"dataset {settings.dataset!r} has no evaluation split; pass one "
                    f"(--split), e.g. one of {sorted(info.splits)}.")
  view_kwargs = dict(view_kwargs)
  image_size = settings.image_size or (info.image_shape[0] if info.image_shape[0] ==
                                       info.image_shape[1] else None) or REFERENCE_SIZE
  native = info.image_shape[0] if info.image_shape[0] == info.image_shape[1] else None
  if native and native == image_size and auto_scales and view != "150crop":
    view_kwargs.pop("scales", None)
    geometry = dict(train_geometry or {})
    if view == "dense_multiscale":
      geometry.pop("pad", None)  # the whole image: no crops to shift
    if view in ("10crop", "144crop", "dense_multiscale"):
      view_kwargs.update(geometry)
  elif view == "144crop" and "scales" not in view_kwargs and image_size != REFERENCE_SIZE:
    # GoogLeNet's 256..352 are for 224 crops; smaller networks get the same ratios.
    view_kwargs["scales"] = [int(round(q * image_size / REFERENCE_SIZE))
                             for q in GOOGLENET_SCALES]
  batches = data.eval_iterator(
      settings.dataset, data_dir=settings.data_dir, split=split,
      global_batch_size=batch_size, view=DATA_VIEWS[view], view_kwargs=view_kwargs,
      image_size=settings.image_size, normalize=settings.normalize,
      stats_split=settings.stats_split)
  total = None
  if split in info.splits:
    per_process = math.ceil(info.splits[split] / jax.process_count())
    total = math.ceil(per_process / (batch_size // jax.process_count()))
  device_input = data.device_input(settings.dataset, normalize=settings.normalize,
                                   data_dir=settings.data_dir, stats_split=settings.stats_split)
  return batches, split, total, device_input, view_kwargs


