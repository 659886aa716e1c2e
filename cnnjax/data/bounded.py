"""A prepared copy of a dataset at a bounded resolution (`max_resolution`).

Decoding a JPEG costs in proportion to its coded size, and most of it is
entropy decoding that no crop or DCT-scale trick avoids (benchmarks/
RESULTS.md, "Input pipeline"). The one lever left on a CPU is to decode
fewer pixels: like FFCV's `max_resolution`, this copy stores every image
whose longer side exceeds `max_resolution` scaled down (area filter, aspect
kept) and re-encoded as a baseline JPEG at quality 90 with 4:2:0 chroma,
ImageNet's own format; images already within the bound keep their bytes.
It is written once, by a tfds builder of ours, under
`<data_dir>/cnnjax_bounded/max<bound>_<key>/` (key: the source's
identity, `Source.identity`: its prepared directory, version and files, so
a re-prepared source, e.g. an image folder whose images moved between
classes, gets a new copy; never the name as typed, which means different
data from different working directories), so it is read by exactly the
code path of any tfds dataset, with the source's splits, classes and
labels, written in the source's order. The identity is stored with the
copy and compared when it is opened.

Training policy: the copy changes what the network sees, so it is an
option (default off) for the training split only; evaluation always reads
the original. Pick the bound from the preset's largest resampled size: a
crop is never upsampled more than it would be from the original as long as
the bound is at least the side the preset samples at (Inception crops at
224: at least ~1.4x the input side, 320; AlexNet's 256 shorter side: 341
for 4:3 images; VGG's scale jittering up to S=512: 683, i.e. no saving on
ImageNet's ~500x375 images). The pixel error of a bound against the
original is measured by `benchmarks/input_pipeline.py` (RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.image_ops import round_to_uint8
from cnnjax.errors import DataError

JPEG_QUALITY = 90
MIN_RESOLUTION = 32


def check_max_resolution(max_resolution) -> int:
  """0 (the original) or a bound of at least MIN_RESOLUTION pixels; DataError otherwise."""
  if isinstance(max_resolution, bool) or not isinstance(max_resolution, int) or (
      max_resolution != 0 and max_resolution < MIN_RESOLUTION):
    raise DataError(f"max_resolution must be 0 (read the original images) or an integer >= "
                    f"{MIN_RESOLUTION} (the longer side of a prepared copy), got {max_resolution!r}")
  return max_resolution


def bound_image(encoded: tf.Tensor, max_resolution: int) -> tf.Tensor:
  """Encoded image -> the bytes the bounded copy stores (see the module docstring).

  A JPEG's size comes from its header, so one within the bound is never
  decoded; other formats are decoded once.
  """
  def bounded(decode, shape):
    larger = tf.maximum(shape[0], shape[1]) > max_resolution
    return tf.cond(larger, lambda: _scaled_jpeg(decode(), shape, max_resolution), lambda: encoded)

  def from_jpeg():
    return bounded(lambda: tf.io.decode_jpeg(encoded, channels=3),
                   tf.image.extract_jpeg_shape(encoded))

  def from_other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return bounded(lambda: image, tf.shape(image))
  return tf.cond(tf.io.is_jpeg(encoded), from_jpeg, from_other)


def _scaled_jpeg(image: tf.Tensor, shape: tf.Tensor, max_resolution: int) -> tf.Tensor:
  """`image` with its longer side scaled to max_resolution (area filter), as a JPEG."""
  scale = max_resolution / tf.cast(tf.maximum(shape[0], shape[1]), tf.float32)
  size = tf.maximum(1, tf.cast(tf.round(tf.cast(shape[:2], tf.float32) * scale), tf.int32))
  pixels = round_to_uint8(tf.image.resize(image, size, method="area"))
  return tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY, chroma_downsampling=True)


class CnnjaxBounded(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The bounded copy of a prepared `Source` (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, source, max_resolution: int, **kwargs):
    self._source = source
    self._max_resolution = max_resolution
    key = hashlib.sha256(json.dumps([source.identity, max_resolution, JPEG_QUALITY],
                                    sort_keys=True).encode()).hexdigest()[:16]
    super().__init__(config=tfds.core.BuilderConfig(name=f"max{max_resolution}_{key}"), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    label = self._source.builder.info.features[self._source.label_key]
    names = list(label.names) if label.names else None
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"{self._source.name} with the longer side of every image at most "
                     f"{self._max_resolution} pixels (JPEG quality {JPEG_QUALITY})"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": (tfds.features.ClassLabel(names=names) if names else
                      tfds.features.ClassLabel(num_classes=self._source.num_classes)),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # written in the source's order
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["source"] = self._source.name
    self.info.metadata["source_identity"] = self._source.identity
    self.info.metadata["max_resolution"] = self._max_resolution
    return {split: self._generate_examples(split) for split in self._source.split_names()}

  def _generate_examples(self, split):
    max_resolution = self._max_resolution
    ds = self._source.read(split).enumerate().map(
        lambda i, ex: (i, bound_image(ex["image"], max_resolution), ex["label"]),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    for index, encoded, label in ds.as_numpy_iterator():
      yield f"{int(index):09d}", {"image": encoded, "label": int(label)}


def bounded_builder(source, max_resolution: int):
  """The (possibly not yet prepared) builder of `source`'s copy bounded at `max_resolution`."""
  if not source.image_is_encoded:
    raise DataError(f"max_resolution needs a dataset of encoded images; {source.name!r} stores "
                    "decoded arrays, which are small enough to read as they are")
  if not source.split_names():
    raise DataError(f"max_resolution needs split metadata, which {source.name!r} does not have "
                    "(mocked data): read the original (max_resolution=0)")
  return CnnjaxBounded(source, max_resolution, data_dir=os.fspath(source.data_dir))


def check_bounded_source(builder, source) -> None:
  """DataError unless the prepared copy `builder` was made from `source` as it is now."""
  stored = builder.info.metadata.get("source_identity")
  if stored == source.identity:
    return
  if stored is None:
    change = "it does not record its source"
  else:
    before, now = stored, source.identity
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    change = "its source's " + ", ".join(changed) + " changed"
    if "files" in changed:
      old, new = {f[0]: f[1:] for f in before["files"]}, {f[0]: f[1:] for f in now["files"]}
      differ = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
      change += f" ({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''})"
  raise DataError(f"the bounded copy {builder.data_dir} of {source.name!r} is stale: {change}. "
                  "Delete that folder and it will be prepared anew from the source")
