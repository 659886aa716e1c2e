"""The data side of a run, as the loop sees it: facts, batches, device preprocessing.

`open_inputs(config, mesh)` returns a `RunInputs`: the dataset's facts (splits,
classes, training-set size), `train_batches(start_step)` and
`eval_batches()` iterators of this process's rows, and the preprocessing
the train and eval steps apply on the device (`device_input`; None when
batches arrive ready). Two kinds of dataset:

* every name `cnnjax.data` knows (tfds names, `image_folder:<dir>`, the
  embedded `digits`): read by tf.data on the host; TensorFlow is imported
  here, on first use, and nowhere else on the training path;
* `"synthetic"`: random device-resident batches of the configured shape,
  made once and fed every step. No host input at all: what the loop costs
  by itself, and the input of the GPU check (which has no TensorFlow).

The settings read here: `InputSettings` (config.input) and `EvalSettings`
(config.eval).

Batches are host numpy arrays (or, for synthetic data, global `jax.Array`s
already on the mesh); `cnnjax.sharding.prefetch_to_device` places them.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import sharding
from cnnjax.train import checks, durations
from cnnjax.train.checks import require

SYNTHETIC_DATASET = "synthetic"
SYNTHETIC_TRAIN_EXAMPLES = 1_281_167  # ImageNet's training set: epochs mean what they do there
SYNTHETIC_CLASSES = 1000
SYNTHETIC_EVAL_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class InputSettings(checks.Section):
  """config.input: which images, read and prepared how."""

  dataset: str = "digits"  # a tfds name, "image_folder:<path>", "synthetic" or the embedded digits
  data_dir: str = ""  # "": tfds default
  train_split: str = ""  # "": the dataset's training split
  eval_split: str = ""  # "": the dataset's validation split
  image_size: int = 0  # 0: the model's native resolution
  normalize: str = "per_channel"  # mean subtraction, see cnnjax.data
  augment: str = "none"  # none | cifar | alexnet | scale_jitter | inception
  augment_kwargs: dict = dataclasses.field(default_factory=dict)
  # Where the host stops (cnnjax.preprocessing.boundary): "float32" finishes
  # the images on the host; "uint8" ships uint8 (+ crop windows) and the
  # jitted steps colour-augment and normalise them (a quarter of the bytes);
  # "canvas" (inception) also leaves the crop's resize and flip to the step;
  # "dali" decodes the training images on the GPU with NVIDIA DALI (`pip
  # install -e ".[dali]"`; evaluation stays on tf.data, as "uint8"); "auto":
  # uint8 with an accelerator, and on a CPU-only JAX the faster there
  # (float32: RESULTS.md, "uint8 to the device").
  boundary: str = "auto"
  # Training images from a copy of the dataset whose longer side is at most
  # this many pixels (prepared once; fewer pixels to decode, so fewer host
  # cores per accelerator; cnnjax.data.bounded for the policy). 0: the
  # original. Evaluation always reads the original.
  max_resolution: int = 0
  # An unreadable image file (image folders): "raise" stops before training
  # with a DataError naming it; "skip" leaves it out and counts it.
  on_bad_image: str = "raise"
  # Batches placed on the devices ahead of the step that uses them, so their
  # host-to-device copies overlap compute (>= 1).
  prefetch_batches: int = 2

  def check(self) -> None:
    checks.choose("input.augment", self.augment,
                  ("none", "cifar", "alexnet", "scale_jitter", "inception"))
    checks.choose("input.on_bad_image", self.on_bad_image, ("raise", "skip"))
    checks.choose("input.boundary", self.boundary, ("auto", "float32", "uint8", "canvas", "dali"))
    require(self.image_size >= 0, "input.image_size", self.image_size, "0 (default) or > 0")
    require(self.prefetch_batches >= 1, "input.prefetch_batches", self.prefetch_batches,
            ">= 1 (batches on the devices ahead of the step)")
    require(self.max_resolution == 0 or self.max_resolution >= 32, "input.max_resolution",
            self.max_resolution, "0 (the original images) or >= 32 (the longer side of a copy)")
    if self.boundary == "dali":
      require(self.max_resolution == 0, "input.max_resolution", self.max_resolution,
              "0 with input.boundary='dali' (DALI decodes on the GPU; the bounded copy is the "
              "host pipeline's way to decode less)")


@dataclasses.dataclass(frozen=True)
class EvalSettings(checks.Section):
  """config.eval: the periodic validation (full protocols: cnnjax evaluation)."""

  view: str = "center"  # center | 10crop
  view_kwargs: dict = dataclasses.field(default_factory=dict)
  batch_size: int = 0  # 0: run.batch_size
  num_batches: int = 0  # 0: the whole validation split
  every_steps: int = -1  # -1 with every_epochs -1: only at the end
  every_epochs: float = -1.0

  def check(self) -> None:
    checks.choose("eval.view", self.view, ("center", "10crop"))
    require(self.batch_size >= 0, "eval.batch_size", self.batch_size,
            "0 (same as run.batch_size) or a positive integer")
    require(self.num_batches >= 0, "eval.num_batches", self.num_batches, ">= 0")
    durations.check_pair(self.every_steps, self.every_epochs, "eval.every")

  def global_batch(self, batch_size: int) -> int:
    """The evaluation's global batch: batch_size, or the training batch when 0."""
    return self.batch_size or batch_size


@dataclasses.dataclass(frozen=True)
class RunInputs:
  """What the loop needs from the data: facts, batch streams and on-device preprocessing."""

  dataset: str
  train_split: str
  eval_split: str
  num_classes: int
  num_train_examples: int
  skipped_images: int
  train_batches: Callable[[int], Iterator[Mapping[str, Any]]]  # start_step -> batches
  eval_batches: Callable[[], Iterable[Mapping[str, Any]]]
  device_input: Any = None  # the steps' preprocessing of uint8 batches (None: ready batches)


def open_inputs(settings: InputSettings, evaluation: EvalSettings, mesh, *, batch_size: int,
                seed: int, image_size: int, num_classes: int = 0) -> RunInputs:
  """The run's inputs: `image_size` resolved (see `resolve_image_size`), `batch_size` the
  global training batch, `num_classes` the model's (synthetic data only; 0: 1000)."""
  if settings.dataset == SYNTHETIC_DATASET:
    return _synthetic_inputs(evaluation, mesh, batch_size=batch_size, seed=seed,
                             image_size=image_size, num_classes=num_classes)
  return _tfds_inputs(settings, evaluation, batch_size=batch_size, seed=seed,
                      image_size=image_size)


# A dataset whose typical image side is this many times smaller or larger than
# the network input gets a one-line note naming config.input.image_size.
SIZE_NOTE_RATIO = 1.5
_SIZE_SAMPLE = 32


def resolve_image_size(settings: InputSettings, native_size: int) -> tuple[int, str | None]:
  """(network input side, a one-line note or None) for config.input.

  image_size 0 means the model's native resolution (the registry's
  `ModelSpec.image_size`: 32 for the CIFAR networks, 224 or 227 for the
  ImageNet ones), whatever the dataset's own size: a CIFAR net on a folder
  of photographs trains at 32, as it was designed to. The note says so when
  the dataset's images are much smaller or larger than that input.
  """
  size = int(settings.image_size or native_size)
  if settings.dataset == SYNTHETIC_DATASET:
    return size, None
  typical = _typical_image_side(settings)
  if typical is None or 1 / SIZE_NOTE_RATIO <= typical / size <= SIZE_NOTE_RATIO:
    return size, None
  source = "config.input.image_size" if settings.image_size else "the model's native resolution"
  return size, (f"note: the images of {settings.dataset} are ~{typical} pixels on their shorter "
                f"side and are resized to {size} ({source}); set config.input.image_size to "
                "train at another resolution")


def _typical_image_side(settings: InputSettings) -> int | None:
  """The median shorter side of the dataset's images: fixed for most tfds datasets,
  sampled from the files for an image folder; None when unknown."""
  from cnnjax import data  # pylint: disable=import-outside-toplevel
  dataset = settings.dataset
  if dataset.startswith("image_folder:"):
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from cnnjax.data import image_folder  # pylint: disable=import-outside-toplevel
    layout = image_folder.scan_folder(dataset.split(":", 1)[1], settings.on_bad_image)
    files = [path for split in layout.splits.values() for path, _ in split][:_SIZE_SAMPLE]
    sides = []
    for path in files:
      try:
        with Image.open(os.path.join(layout.root, path)) as image:
          sides.append(min(image.size))
      except OSError:
        continue  # preparation names unreadable files
    return int(np.median(sides)) if sides else None
  info = data.dataset_info(dataset, settings.data_dir or None,
                           on_bad_image=settings.on_bad_image)
  height, width = info.image_shape[:2]
  return min(height, width) if height and width else None


def _tfds_inputs(c: InputSettings, evaluation: EvalSettings, *, batch_size: int, seed: int,
                 image_size: int) -> RunInputs:
  from cnnjax import data  # pylint: disable=import-outside-toplevel  (TensorFlow: only here)
  data_dir = c.data_dir or None
  info = data.dataset_info(c.dataset, data_dir, on_bad_image=c.on_bad_image)
  data.sources.check_training_classes(c.dataset, info.num_classes)
  train_split = c.train_split or info.train_split
  eval_split = c.eval_split or info.eval_split
  num_train = _split_size(data, c, train_split, fallback=info.num_train_examples)
  augment_kwargs = checks.plain(c.augment_kwargs)

  def train_batches(start_step: int) -> Iterator[Mapping[str, Any]]:
    if c.boundary == "dali":  # decoded on the GPU; colour in the step
      from cnnjax import dali  # pylint: disable=import-outside-toplevel
      return dali.train_iterator(
          c.dataset, data_dir=data_dir, split=train_split, global_batch_size=batch_size,
          augment=c.augment, augment_kwargs=augment_kwargs, image_size=image_size or 224,
          seed=seed, start_step=start_step)
    return data.train_iterator(
        c.dataset, data_dir=data_dir, split=train_split, global_batch_size=batch_size,
        augment=c.augment, augment_kwargs=augment_kwargs, image_size=image_size,
        normalize=c.normalize, seed=seed, start_step=start_step,
        stats_split=train_split, on_bad_image=c.on_bad_image, boundary=c.boundary,
        max_resolution=c.max_resolution)

  def eval_batches() -> Iterable[Mapping[str, Any]]:
    batches = data.eval_iterator(
        c.dataset, data_dir=data_dir, split=eval_split,
        global_batch_size=evaluation.global_batch(batch_size), view=evaluation.view,
        view_kwargs=checks.plain(evaluation.view_kwargs), image_size=image_size,
        normalize=c.normalize, stats_split=train_split, on_bad_image=c.on_bad_image,
        boundary="uint8" if c.boundary == "dali" else c.boundary)
    return itertools.islice(batches, evaluation.num_batches or None)

  return RunInputs(
      dataset=c.dataset, train_split=train_split, eval_split=eval_split,
      num_classes=int(info.num_classes), num_train_examples=num_train,
      skipped_images=int(getattr(info, "skipped_images", 0) or 0),
      train_batches=train_batches, eval_batches=eval_batches,
      device_input=_device_input(data, c, train_split, image_size))


def _device_input(data, c: InputSettings, train_split: str, image_size: int):
  """The steps' share of the preprocessing: colour augmentation and normalisation of the
  uint8 batches the pipeline ships (float batches, prepared on the host, pass through).
  Its statistics, like the pipeline's, come from the training split the run uses
  (train[:45000] for CIFAR's held-out recipe, not the whole of train)."""
  return data.device_input(c.dataset, augment=c.augment,
                           augment_kwargs=checks.plain(c.augment_kwargs), normalize=c.normalize,
                           data_dir=c.data_dir or None, on_bad_image=c.on_bad_image,
                           stats_split=train_split, image_size=image_size or None,
                           boundary="uint8" if c.boundary == "dali" else c.boundary)


def _split_size(data, c: InputSettings, split: str, fallback: int) -> int:
  try:
    source = data.sources.get_source(c.dataset, c.data_dir or None, on_bad_image=c.on_bad_image)
    return int(source.num_examples(split))
  except Exception:  # pylint: disable=broad-except  (no per-split metadata: the info's count)
    return int(fallback)


def _synthetic_inputs(evaluation: EvalSettings, mesh, *, batch_size: int, seed: int,
                      image_size: int, num_classes: int) -> RunInputs:
  size = int(image_size)
  num_classes = int(num_classes or SYNTHETIC_CLASSES)
  batch_sharding = sharding.batch_sharded(mesh)

  def make_batch(batch_size: int, seed: int, with_mask: bool) -> dict[str, jax.Array]:
    """One global batch made on the devices, sharded on 'data' (nothing crosses the host)."""
    def build(key):
      image_key, label_key = jax.random.split(key)
      batch = {"image": jax.random.normal(image_key, (batch_size, size, size, 3), jnp.float32),
               "label": jax.random.randint(label_key, (batch_size,), 0, num_classes, jnp.int32)}
      if with_mask:
        batch["mask"] = jnp.ones((batch_size,), jnp.bool_)
      return batch
    return jax.jit(build, out_shardings=batch_sharding)(jax.random.PRNGKey(seed))

  def train_batches(start_step: int) -> Iterator[Mapping[str, Any]]:
    del start_step  # every step sees the same batch
    return itertools.repeat(make_batch(batch_size, seed, with_mask=False))

  def eval_batches() -> Iterable[Mapping[str, Any]]:
    batch = make_batch(evaluation.global_batch(batch_size), seed + 1, with_mask=True)
    return [batch] * int(evaluation.num_batches or SYNTHETIC_EVAL_BATCHES)

  return RunInputs(
      dataset=SYNTHETIC_DATASET, train_split="synthetic", eval_split="synthetic",
      num_classes=num_classes, num_train_examples=SYNTHETIC_TRAIN_EXAMPLES, skipped_images=0,
      train_batches=train_batches, eval_batches=eval_batches)

