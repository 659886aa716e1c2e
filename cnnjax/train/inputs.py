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

SYNTHETIC_DATASET = "synthetic"
SYNTHETIC_TRAIN_EXAMPLES = 1_281_167  # ImageNet's training set: epochs mean what they do there
SYNTHETIC_CLASSES = 1000
SYNTHETIC_EVAL_BATCHES = 2


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


def open_inputs(config: Mapping[str, Any], mesh) -> RunInputs:
  """The run's inputs for `config` (a mapping with the keys of cnnjax/configs/base.py,
  config.image_size resolved: see `resolve_image_size`)."""
  if config["dataset"] == SYNTHETIC_DATASET:
    return _synthetic_inputs(config, mesh)
  return _tfds_inputs(config)


# A dataset whose typical image side is this many times smaller or larger than
# the network input gets a one-line note naming config.image_size.
SIZE_NOTE_RATIO = 1.5
_SIZE_SAMPLE = 32


def resolve_image_size(config: Mapping[str, Any], native_size: int) -> tuple[int, str | None]:
  """(network input side, a one-line note or None) for `config`.

  config.image_size 0 means the model's native resolution (the registry's
  `ModelSpec.image_size`: 32 for the CIFAR networks, 224 or 227 for the
  ImageNet ones), whatever the dataset's own size: a CIFAR net on a folder
  of photographs trains at 32, as it was designed to. The note says so when
  the dataset's images are much smaller or larger than that input.
  """
  size = int(config["image_size"] or native_size)
  if config["dataset"] == SYNTHETIC_DATASET:
    return size, None
  typical = _typical_image_side(config)
  if typical is None or 1 / SIZE_NOTE_RATIO <= typical / size <= SIZE_NOTE_RATIO:
    return size, None
  source = "config.image_size" if config["image_size"] else "the model's native resolution"
  return size, (f"note: the images of {config['dataset']} are ~{typical} pixels on their shorter "
                f"side and are resized to {size} ({source}); set config.image_size to train "
                "at another resolution")


def _typical_image_side(config: Mapping[str, Any]) -> int | None:
  """The median shorter side of the dataset's images: fixed for most tfds datasets,
  sampled from the files for an image folder; None when unknown."""
  from cnnjax import data  # pylint: disable=import-outside-toplevel
  dataset = config["dataset"]
  if dataset.startswith("image_folder:"):
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from cnnjax.data import image_folder  # pylint: disable=import-outside-toplevel
    layout = image_folder.scan_folder(dataset.split(":", 1)[1], config["on_bad_image"])
    files = [path for split in layout.splits.values() for path, _ in split][:_SIZE_SAMPLE]
    sides = []
    for path in files:
      try:
        with Image.open(os.path.join(layout.root, path)) as image:
          sides.append(min(image.size))
      except OSError:
        continue  # preparation names unreadable files
    return int(np.median(sides)) if sides else None
  info = data.dataset_info(dataset, config["data_dir"] or None, on_bad_image=config["on_bad_image"])
  height, width = info.image_shape[:2]
  return min(height, width) if height and width else None


def _plain(mapping) -> dict[str, Any]:
  return mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping or {})


def _tfds_inputs(c: Mapping[str, Any]) -> RunInputs:
  from cnnjax import data  # pylint: disable=import-outside-toplevel  (TensorFlow: only here)
  data_dir = c["data_dir"] or None
  info = data.dataset_info(c["dataset"], data_dir, on_bad_image=c["on_bad_image"])
  data.sources.check_training_classes(c["dataset"], info.num_classes)
  train_split = c["train_split"] or info.train_split
  eval_split = c["eval_split"] or info.eval_split
  num_train = _split_size(data, c, train_split, fallback=info.num_train_examples)
  augment_kwargs = _plain(c["augment_kwargs"])
  image_size = c["image_size"]
  boundary = c.get("input_boundary", "auto")

  def train_batches(start_step: int) -> Iterator[Mapping[str, Any]]:
    if boundary == "dali":  # decoded on the GPU; colour in the step
      from cnnjax import dali  # pylint: disable=import-outside-toplevel
      return dali.train_iterator(
          c["dataset"], data_dir=data_dir, split=train_split, global_batch_size=c["batch_size"],
          augment=c["augment"], augment_kwargs=augment_kwargs, image_size=image_size or 224,
          seed=c["seed"], start_step=start_step)
    return data.train_iterator(
        c["dataset"], data_dir=data_dir, split=train_split, global_batch_size=c["batch_size"],
        augment=c["augment"], augment_kwargs=augment_kwargs, image_size=image_size,
        normalize=c["normalize"], seed=c["seed"], start_step=start_step,
        stats_split=train_split, on_bad_image=c["on_bad_image"], boundary=boundary,
        max_resolution=c.get("max_resolution", 0))

  def eval_batches() -> Iterable[Mapping[str, Any]]:
    batches = data.eval_iterator(
        c["dataset"], data_dir=data_dir, split=eval_split,
        global_batch_size=c["eval_batch_size"] or c["batch_size"], view=c["eval_view"],
        view_kwargs=_plain(c["eval_view_kwargs"]), image_size=image_size,
        normalize=c["normalize"], stats_split=train_split, on_bad_image=c["on_bad_image"],
        boundary="uint8" if boundary == "dali" else boundary)
    return itertools.islice(batches, c["eval_num_batches"] or None)

  return RunInputs(
      dataset=c["dataset"], train_split=train_split, eval_split=eval_split,
      num_classes=int(info.num_classes), num_train_examples=num_train,
      skipped_images=int(getattr(info, "skipped_images", 0) or 0),
      train_batches=train_batches, eval_batches=eval_batches,
      device_input=_device_input(data, c, train_split))


def _device_input(data, c: Mapping[str, Any], train_split: str):
  """The steps' share of the preprocessing: colour augmentation and normalisation of the
  uint8 batches the pipeline ships (float batches, prepared on the host, pass through).
  Its statistics, like the pipeline's, come from the training split the run uses
  (train[:45000] for CIFAR's held-out recipe, not the whole of train)."""
  return data.device_input(c["dataset"], augment=c["augment"],
                           augment_kwargs=_plain(c["augment_kwargs"]), normalize=c["normalize"],
                           data_dir=c["data_dir"] or None, on_bad_image=c["on_bad_image"],
                           stats_split=train_split, image_size=c["image_size"] or None,
                           boundary="uint8" if c.get("input_boundary", "auto") == "dali"
                           else c.get("input_boundary", "auto"))


def _split_size(data, c: Mapping[str, Any], split: str, fallback: int) -> int:
  try:
    source = data.sources.get_source(c["dataset"], c["data_dir"] or None,
                                     on_bad_image=c["on_bad_image"])
    return int(source.num_examples(split))
  except Exception:  # pylint: disable=broad-except  (no per-split metadata: the info's count)
    return int(fallback)


def _synthetic_inputs(c: Mapping[str, Any], mesh) -> RunInputs:
  size = int(c["image_size"])
  num_classes = int(c["num_classes"] or SYNTHETIC_CLASSES)
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
    return itertools.repeat(make_batch(c["batch_size"], c["seed"], with_mask=False))

  def eval_batches() -> Iterable[Mapping[str, Any]]:
    batch = make_batch(c["eval_batch_size"] or c["batch_size"], c["seed"] + 1, with_mask=True)
    return [batch] * int(c["eval_num_batches"] or SYNTHETIC_EVAL_BATCHES)

  return RunInputs(
      dataset=SYNTHETIC_DATASET, train_split="synthetic", eval_split="synthetic",
      num_classes=num_classes, num_train_examples=SYNTHETIC_TRAIN_EXAMPLES, skipped_images=0,
      train_batches=train_batches, eval_batches=eval_batches)

