"""NVIDIA DALI training input: prepared tfds TFRecords -> uint8 batches, decoded on the GPU.

An alternative to `cnnjax.data.train_iterator` for accelerator hosts without
TensorFlow (optional extra: `pip install -e ".[dali]"`). It reads what tfds
(or cnnjax's `image_folder:` source) prepared once, elsewhere:

  <data_dir>/<name>/[<config>/]<version>/dataset_info.json, features.json,
                                         <name>-<split>.tfrecord-XXXXX-of-YYYYY

and yields what `train_iterator(..., device_preprocessing=True)` yields:
{"image": uint8 [b, S, S, 3], "label": int32 [b], "window": int32 [b, 4]};
colour distortions and normalisation stay in the jitted step
(`cnnjax.train.device_input.DeviceInput`, same window semantics).

Where the work happens:

  Python (an `fn.external_source` callback, one call per example)
    position t = step * b + row  ->  (epoch, place) = divmod(t, share size)
    example = share start + permutation(seed, process, epoch)[place]
    record bytes by offset (an index file per shard, built here once)
    -> tf.train.Example parsed by hand -> encoded image, label
    -> height/width from the JPEG/PNG header -> the preset's crop plan,
       drawn with numpy from (seed, process, t)
  DALI (nvJPEG / the hardware JPEG decoder with device="gpu"; libjpeg-turbo on the CPU)
    decode only the plan's slice -> resize its region to S x S -> mirror

Every random choice is a pure function of (seed, process, epoch) or
(seed, process, t), so `start_step=n` yields exactly the batches an
uninterrupted iterator yields after n batches, whatever the number of
threads, workers or local devices. Each process reads its own contiguous
share of the split (the sizes of `tfds.even_splits`). The order and draws
are this module's own: equal in distribution to the tf.data pipeline's,
not equal batch for batch.

Geometry, as the presets of `cnnjax.data.augment` (device path):
  inception     TF's sample_distorted_bounding_box draw (area 8-100%, aspect
                3/4..4/3, 10 attempts, else the whole image), decoded
                cropped, resized to S with an interpolation drawn from
                `interpolations` (no antialiasing, as there; "area" is DALI's
                triangular filter, close to TF's area average), flipped;
                window (S, 0, 0, 0)
  scale_jitter  shorter side -> U{scale_min..scale_max}, a random S crop,
                flipped: decoded as the crop's region of the original and
                resized once (antialiased bilinear); window (S, 0, 0, 0)
  alexnet       shorter side -> resize_size, the centre square, a random S
                crop, flipped: one region, one resize; window
                (resize_size, top, left, flipped)

Importing this module needs numpy only; DALI and JAX are imported when an
iterator is built. It lives outside `cnnjax.data` because importing any
module of that package runs its __init__, which imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnnjax.errors import ConfigError, DataError, close_matches

INSTALL_HINT = 'pip install -e ".[dali]"  (or: pip install nvidia-dali-cuda120)'
PRESETS = ("inception", "scale_jitter", "alexnet")
PRESET_KWARGS = {
    "inception": {"area_range", "aspect_range", "max_attempts", "interpolations", "flip",
                  "photometric", "brightness", "contrast", "saturation", "hue", "pca_color",
                  "pca_alpha_std"},
    "scale_jitter": {"scale_min", "scale_max", "flip", "pca_color", "pca_alpha_std"},
    "alexnet": {"resize_size", "flip", "pca_color", "pca_alpha_std"},
}
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")
DIGITS_BUILDER = "cnnjax_digits"
IMAGE_FOLDER_PREFIX = "image_folder:"
IMAGE_FOLDER_BUILDER = "cnnjax_image_folder"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
# numpy seed streams: the epoch permutation and the per-example draws never share a generator.
_EPOCH_STREAM, _EXAMPLE_STREAM = 1, 2
_RECORD_HEADER, _RECORD_FOOTER = 12, 4  # uint64 length + uint32 crc; uint32 crc


# ----------------------------------------------------------------------------
# Prepared datasets, read without tfds.


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
  """One split of a prepared dataset: its shard files, their example counts and its features."""
  dataset: str
  split: str
  directory: str
  files: tuple[str, ...]
  shard_lengths: tuple[int, ...]
  image_key: str
  label_key: str
  num_classes: int

  @property
  def num_examples(self) -> int:
    return int(sum(self.shard_lengths))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """The argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (as `cnnjax.data` resolves it)."""
  chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def _not_prepared(dataset: str, root: str, looked: str) -> DataError:
  return DataError(
      f"dataset {dataset!r} is not prepared in data_dir {root} (looked for {looked}). The DALI "
      "input reads the TFRecords that tfds prepares; prepare it once on a machine with "
      f"TensorFlow: python -c \"import cnnjax.data; cnnjax.data.dataset_info({dataset!r}, "
      f"data_dir={root!r})\" (or `tfds build`), and copy the data_dir here.")


def _version_key(name: str) -> tuple[int, ...]:
  return tuple(int(p) for p in name.split("."))


def _version_dirs(folder: str) -> list[str]:
  """Sub-folders named like versions ("5.1.0") that hold a dataset_info.json, newest first."""
  if not os.path.isdir(folder):
    return []
  found = [e.name for e in os.scandir(folder) if e.is_dir() and re.fullmatch(r"\d+\.\d+\.\d+", e.name)
           and os.path.isfile(os.path.join(folder, e.name, "dataset_info.json"))]
  return [os.path.join(folder, v) for v in sorted(found, key=_version_key, reverse=True)]


def dataset_directory(dataset: str, data_dir: str | os.PathLike | None = None) -> str:
  """The prepared folder (with dataset_info.json) of a dataset name, an image folder or a path.

  Names: "imagenet2012", "imagenet2012:5.1.0", "name/config[:version]",
  "digits", "image_folder:<path>" (the folder as cnnjax last prepared it),
  or the path of a prepared version folder itself.
  """
  root = resolve_data_dir(data_dir)
  if os.path.isfile(os.path.join(os.fspath(dataset), "dataset_info.json")):
    return os.path.abspath(os.fspath(dataset))
  if dataset.startswith(IMAGE_FOLDER_PREFIX):
    folder = os.path.abspath(os.path.expanduser(dataset[len(IMAGE_FOLDER_PREFIX):]))
    if not os.path.isdir(folder):
      raise DataError(f"image folder {folder} does not exist or is not a directory")
    candidates = []
    for metadata in glob.glob(os.path.join(root, IMAGE_FOLDER_BUILDER, "*", "*", "metadata.json")):
      try:
        with open(metadata) as f:
          prepared_root = json.load(f).get("root")
      except (OSError, ValueError):
        continue
      info = os.path.join(os.path.dirname(metadata), "dataset_info.json")
      if prepared_root == folder and os.path.isfile(info):
        candidates.append((os.path.getmtime(info), os.path.dirname(metadata)))
    if not candidates:
      raise _not_prepared(dataset, root, os.path.join(root, IMAGE_FOLDER_BUILDER, "<key>", "1.0.0"))
    return max(candidates)[1]
  name, _, version = dataset.partition(":")
  name = DIGITS_BUILDER if name == "digits" else name
  base = os.path.join(root, *name.split("/"))
  if version:
    path = os.path.join(base, version)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
      raise _not_prepared(dataset, root, path)
    return path
  versions = _version_dirs(base)
  if versions:
    return versions[0]
  configs = ({c: _version_dirs(os.path.join(base, c)) for c in os.listdir(base)}
             if os.path.isdir(base) else {})
  configs = {c: v for c, v in configs.items() if v}
  if len(configs) == 1:
    return next(iter(configs.values()))[0]
  if configs:
    raise DataError(f"dataset {dataset!r} is prepared in several configurations in {base} "
                    f"({', '.join(sorted(configs))}); name one, e.g. '{name}/{sorted(configs)[0]}'")
  raise _not_prepared(dataset, root, os.path.join(base, "<version>"))


def _shard_name(template: str, name: str, split: str, file_format: str, index: int, count: int) -> str:
  fields = {"DATASET": name, "SPLIT": split, "FILEFORMAT": file_format,
            "SHARD_X_OF_Y": f"{index:05d}-of-{count:05d}", "SHARD_INDEX": f"{index:05d}",
            "NUM_SHARDS": f"{count:05d}"}
  return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def prepared_split(dataset: str, data_dir: str | os.PathLike | None = None,
                   split: str = "train") -> PreparedSplit:
  """The shard files, per-shard counts and image/label features of `split` (plain JSON, no tfds)."""
  directory = dataset_directory(dataset, data_dir)
  try:
    with open(os.path.join(directory, "dataset_info.json")) as f:
      info = json.load(f)
    with open(os.path.join(directory, "features.json")) as f:
      features = json.load(f)["featuresDict"]["features"]
  except (OSError, ValueError, KeyError) as error:
    raise DataError(f"dataset {dataset!r}: cannot read the metadata in {directory} "
                    f"({type(error).__name__}: {error}); prepare it again with cnnjax/tfds") from error
  file_format = info.get("fileFormat", "tfrecord")
  if file_format != "tfrecord":
    raise DataError(f"dataset {dataset!r} in {directory} is stored as {file_format}; the DALI "
                    "input reads TFRecords: prepare it with file_format='tfrecord'")
  splits = {s["name"]: s for s in info.get("splits", [])}
  if split not in splits:
    hint = (" (sub-splits such as 'train[:90%]' are not supported here; name a whole split)"
            if "[" in split else "")
    raise DataError(f"dataset {dataset!r} has no split {split!r}{hint}; "
                    f"{close_matches(split.split('[')[0], splits)}")
  lengths = [int(n) for n in splits[split].get("shardLengths", [])]
  template = splits[split].get("filepathTemplate") or DEFAULT_TEMPLATE
  name = info.get("name") or os.path.basename(os.path.dirname(directory))
  files = [os.path.join(directory, _shard_name(template, name, split, file_format, i, len(lengths)))
           for i in range(len(lengths))]
  kept = [(f, n) for f, n in zip(files, lengths) if n > 0]
  missing = [f for f, _ in kept if not os.path.isfile(f)]
  if missing:
    raise DataError(f"dataset {dataset!r} split {split!r}: {len(missing)} of {len(kept)} TFRecord "
                    f"files are missing (first: {missing[0]}); copy the whole prepared folder "
                    f"{directory}, or prepare it again with cnnjax/tfds")
  image_key, label_key = _image_and_label_keys(dataset, info, features)
  num_classes = int(features[label_key]["classLabel"]["numClasses"])
  return PreparedSplit(dataset=dataset, split=split, directory=directory,
                       files=tuple(f for f, _ in kept), shard_lengths=tuple(n for _, n in kept),
                       image_key=image_key, label_key=label_key, num_classes=num_classes)


def _image_and_label_keys(dataset: str, info: dict, features: dict) -> tuple[str, str]:
  """The supervised keys when they name an encoded image and a class label, else image/label."""
  items = info.get("supervisedKeys", {}).get("tuple", {}).get("items", [])
  candidates = []
  if len(items) == 2 and all("featureKey" in i for i in items):
    candidates.append((items[0]["featureKey"], items[1]["featureKey"]))
  candidates.append(("image", "label"))

  def kind(key: str) -> str:
    return features.get(key, {}).get("pythonClassName", "").rsplit(".", 1)[-1]

  for image_key, label_key in candidates:
    if kind(image_key) == "Image" and kind(label_key) == "ClassLabel":
      return image_key, label_key
  described = ", ".join(f"{k}: {kind(k)}" for k in features)
  raise DataError(f"dataset {dataset!r} has no encoded Image feature with a ClassLabel "
                  f"({described}); the DALI input reads image-classification datasets")


# ----------------------------------------------------------------------------
# TFRecord index files ("offset size" per record, the format of DALI's tfrecord2idx).


def scan_records(path: str) -> np.ndarray:
  """int64 [n, 2]: (offset, size) of every record of a TFRecord file, size with its headers."""
  offsets, sizes = [], []
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    offset = 0
    while offset < file_size:
      f.seek(offset)
      header = f.read(8)
      if len(header) < 8:
        break
      (length,) = struct.unpack("<Q", header)
      size = _RECORD_HEADER + length + _RECORD_FOOTER
      if offset + size > file_size:
        break
      offsets.append(offset)
      sizes.append(size)
      offset += size
  if offset != file_size:
    raise DataError(f"TFRecord file {path} is truncated or corrupt after {len(offsets)} records "
                    f"(byte {offset} of {file_size}); copy or prepare the dataset again")
  return np.stack([np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)], axis=1).reshape(-1, 2)


def default_index_dir() -> str:
  """Where index files go when the data's folder is read-only."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "cnnjax", "dali_index")


def index_path(path: str, index_dir: str | None = None) -> str:
  """`<file>.idx` beside the data when that folder is writable (and no index_dir is given),
  else a name keyed by the file's path, size and mtime in index_dir / the cache."""
  if index_dir is None and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
    return path + ".idx"
  stat = os.stat(path)
  key = hashlib.sha1(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
  return os.path.join(index_dir or default_index_dir(), f"{os.path.basename(path)}.{key[:16]}.idx")


def _read_index(path: str) -> np.ndarray | None:
  try:
    return np.loadtxt(path, dtype=np.int64, ndmin=2).reshape(-1, 2)
  except (OSError, ValueError):
    return None


def _write_atomically(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                       dir=os.path.dirname(path))
  try:
    with os.fdopen(handle, "w") as f:
      f.write(text)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def record_index(path: str, expected: int | None = None, index_dir: str | None = None) -> np.ndarray:
  """(offset, size) of each record: from the cached index file, else scanned and cached.

  A cached index is used when it describes the file exactly (its last
  record ends at the end of the file, and it has `expected` records).
  """
  file_size = os.path.getsize(path)
  cached = index_path(path, index_dir)

  def valid(index):
    return (index is not None and (expected is None or len(index) == expected)
            and (file_size if len(index) == 0 else int(index[-1].sum())) == file_size)

  index = _read_index(cached) if os.path.exists(cached) else None
  if valid(index):
    return index
  index = scan_records(path)
  if expected is not None and len(index) != expected:
    raise DataError(f"TFRecord file {path} holds {len(index)} records but dataset_info.json "
                    f"says {expected}; copy or prepare the dataset again")
  text = "".join(f"{o} {s}\n" for o, s in index.tolist())
  try:
    _write_atomically(cached, text)
  except OSError:
    if index_dir is None:  # beside the data failed after all (e.g. a read-only mount): the cache
      _write_atomically(index_path(path, default_index_dir()), text)
    else:
      raise
  return index


# ----------------------------------------------------------------------------
# tf.train.Example, parsed by hand (Example.features -> map<string, Feature>).


def _varint(buf, pos: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      return result, pos
    shift += 7


def _fields(buf, start: int, end: int):
  """(field number, wire type, value) of a message; length-delimited values as (start, end)."""
  pos = start
  while pos < end:
    key, pos = _varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      length, pos = _varint(buf, pos)
      value, pos = (pos, pos + length), pos + length
    elif wire == 1:
      value, pos = (pos, pos + 8), pos + 8
    elif wire == 5:
      value, pos = (pos, pos + 4), pos + 4
    else:
      raise DataError(f"not a tf.train.Example (protobuf wire type {wire} at byte {pos})")
    if pos > end:
      raise DataError("not a tf.train.Example (a field runs past the end of the record)")
    yield field, wire, value


def _signed64(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(buf, start: int, end: int) -> list:
  """The values of a Feature: bytes_list (1), float_list (2) or int64_list (3)."""
  values: list = []
  for kind, _, (list_start, list_end) in _fields(buf, start, end):
    for _, wire, value in _fields(buf, list_start, list_end):
      if kind == 1:
        values.append(buf[value[0]:value[1]])
      elif kind == 3 and wire == 0:
        values.append(_signed64(value))
      elif kind == 3:  # packed varints
        pos = value[0]
        while pos < value[1]:
          item, pos = _varint(buf, pos)
          values.append(_signed64(item))
      elif kind == 2:
        values.extend(np.frombuffer(buf[value[0]:value[1]], "<f4").tolist())
  return values


def parse_example(record) -> dict[str, list]:
  """A serialized tf.train.Example -> {feature name: list of bytes | int | float}.

  Bytes values are memoryview slices of `record` (no copy).
  """
  buf = memoryview(record)
  features: dict[str, list] = {}
  for field, wire, value in _fields(buf, 0, len(buf)):
    if field != 1 or wire != 2:
      continue
    for entry_field, _, (entry_start, entry_end) in _fields(buf, *value):
      if entry_field != 1:
        continue
      name, values = None, []
      for part, _, (part_start, part_end) in _fields(buf, entry_start, entry_end):
        if part == 1:
          name = bytes(buf[part_start:part_end]).decode()
        elif part == 2:
          values = _feature_values(buf, part_start, part_end)
      if name is not None:
        features[name] = values
  return features


# ----------------------------------------------------------------------------
# Image sizes from the header.

_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_hw(data) -> tuple[int, int] | None:
  """(height, width) of a JPEG (SOF segment) or PNG (IHDR); None for other or broken data."""
  data = memoryview(data)
  if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and bytes(data[12:16]) == b"IHDR":
    width, height = struct.unpack(">II", data[16:24])
    return (height, width) if height and width else None
  if bytes(data[:2]) != b"\xff\xd8":
    return None
  pos, end = 2, len(data)
  while pos + 4 <= end:
    if data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in (0x01,) or 0xD0 <= marker <= 0xD8:  # no payload
      pos += 2
      continue
    if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
      return None
    (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
    if marker in _JPEG_SOF and pos + 9 <= end:
      height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
      return (height, width) if height and width else None
    pos += 2 + length
  return None


# ----------------------------------------------------------------------------
# Crop plans: which part of the image is decoded, resized and mirrored.


@dataclasses.dataclass(frozen=True)
class CropPlan:
  """The DALI graph's instructions for one example.

  Decode rows/columns [anchor, anchor + shape) of the image, resize the
  region [roi_start, roi_end) of that slice (float pixels, relative to the
  slice) to the output size with `interpolation`, mirror when `flip`.
  `window` is the batch's "window" row (see `cnnjax.train.device_input`).
  """
  anchor: tuple[int, int]
  shape: tuple[int, int]
  roi_start: tuple[float, float]
  roi_end: tuple[float, float]
  flip: bool
  interpolation: str
  window: tuple[int, int, int, int]


def inception_window(rng: np.random.Generator, height: int, width: int,
                     area_range: tuple[float, float] = (0.08, 1.0),
                     aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                     max_attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w): TF's sample_distorted_bounding_box draw for a whole-image box.

  Per attempt: an aspect ratio (width/height) uniform in range, then a
  height uniform among the integers whose rounded area fits area_range, then
  a uniform position; after max_attempts failures, the whole image.
  """
  min_area = np.float32(area_range[0]) * np.float32(width * height)
  max_area = np.float32(area_range[1]) * np.float32(width * height)
  for _ in range(max_attempts):
    aspect = np.float32(rng.random() * (aspect_range[1] - aspect_range[0]) + aspect_range[0])
    h = int(np.rint(np.sqrt(min_area / aspect)))
    max_h = int(np.rint(np.sqrt(max_area / aspect)))
    if int(np.rint(max_h * aspect)) > width:
      max_h = int((width + 0.5 - 1e-7) / aspect)
      if int(np.rint(max_h * aspect)) > width:
        max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
      h += int(rng.integers(max_h - h + 1))
    w = int(np.rint(h * aspect))
    area = np.float32(w * h)
    if area < min_area:
      h += 1
      w = int(np.rint(h * aspect))
      area = np.float32(w * h)
    if area < min_area:
      continue
    if area > max_area:
      h -= 1
      w = int(np.rint(h * aspect))
      area = np.float32(w * h)
    if area < min_area or area > max_area or not 0 < w <= width or not 0 < h <= height:
      continue
    top = int(rng.integers(height - h)) if h < height else 0
    left = int(rng.integers(width - w)) if w < width else 0
    return top, left, h, w
  return 0, 0, height, width


def shorter_side_size(height: int, width: int, target: int) -> tuple[int, int]:
  """(h, w) after scaling the shorter side to `target` (the rounding of cnnjax.data.image_ops)."""
  scale = np.float32(target) / np.float32(min(height, width))
  new_h = target if height <= width else int(np.round(np.float32(height) * scale))
  new_w = int(np.round(np.float32(width) * scale)) if height <= width else target
  return max(new_h, target), max(new_w, target)


def _region_plan(height: int, width: int, resized: tuple[int, int], top: int, left: int,
                 size: int, flip: bool, window: tuple[int, int, int, int]) -> CropPlan:
  """The plan for a size x size crop at (top, left) of the image resized to `resized`.

  Decodes the crop's region of the original plus a margin for the
  resampling filter's reach (the whole image resize sees those pixels too).
  """
  scale_y, scale_x = height / resized[0], width / resized[1]
  y0, y1 = top * scale_y, (top + size) * scale_y
  x0, x1 = left * scale_x, (left + size) * scale_x
  margin_y, margin_x = int(np.ceil(max(1.0, scale_y))) + 1, int(np.ceil(max(1.0, scale_x))) + 1
  sy0, sx0 = max(0, int(np.floor(y0)) - margin_y), max(0, int(np.floor(x0)) - margin_x)
  sy1, sx1 = min(height, int(np.ceil(y1)) + margin_y), min(width, int(np.ceil(x1)) + margin_x)
  return CropPlan(anchor=(sy0, sx0), shape=(sy1 - sy0, sx1 - sx0),
                  roi_start=(y0 - sy0, x0 - sx0), roi_end=(y1 - sy0, x1 - sx0),
                  flip=flip, interpolation="bilinear", window=window)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A training preset's geometry, with its options checked (`make_preset`)."""
  name: str
  image_size: int
  flip: bool = True
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  max_attempts: int = 10
  interpolations: tuple[str, ...] = INTERPOLATIONS
  scale_min: int = 0
  scale_max: int = 0
  resize_size: int = 0

  @property
  def antialias(self) -> bool:
    return self.name != "inception"

  def plan(self, rng: np.random.Generator, height: int, width: int) -> CropPlan:
    """The example's crop plan, drawn from `rng` (raises DataError when the image is too small)."""
    size = self.image_size
    if self.name == "inception":
      top, left, h, w = inception_window(rng, height, width, self.area_range, self.aspect_range,
                                         self.max_attempts)
      method = self.interpolations[int(rng.integers(len(self.interpolations)))]
      flip = bool(self.flip and rng.random() < 0.5)
      return CropPlan(anchor=(top, left), shape=(h, w), roi_start=(0.0, 0.0),
                      roi_end=(float(h), float(w)), flip=flip, interpolation=method,
                      window=(size, 0, 0, 0))
    if self.name == "scale_jitter":
      target = int(rng.integers(self.scale_min, self.scale_max + 1))
      resized = shorter_side_size(height, width, target)
      top = int(rng.integers(resized[0] - size + 1))
      left = int(rng.integers(resized[1] - size + 1))
      flip = bool(self.flip and rng.random() < 0.5)
      return _region_plan(height, width, resized, top, left, size, flip, (size, 0, 0, 0))
    # alexnet: the centre resize_size square of the resized image, then a random crop of it.
    square = self.resize_size
    resized = shorter_side_size(height, width, square)
    center_top, center_left = (resized[0] - square) // 2, (resized[1] - square) // 2
    top = int(rng.integers(square - size + 1))
    left = int(rng.integers(square - size + 1))
    flip = bool(self.flip and rng.random() < 0.5)
    return _region_plan(height, width, resized, center_top + top, center_left + left, size, flip,
                        (square, top, left, int(flip)))


def make_preset(augment: str, image_size: int, augment_kwargs: dict[str, Any] | None = None) -> Preset:
  """The checked geometry of a preset (ConfigError naming the bad name or option)."""
  kwargs = dict(augment_kwargs or {})
  if augment not in PRESETS:
    raise ConfigError(f"the DALI input has no augmentation preset {augment!r}: "
                      f"{close_matches(augment, PRESETS)} (others run on tf.data: "
                      "cnnjax.data.train_iterator)")
  unknown = sorted(set(kwargs) - PRESET_KWARGS[augment])
  if unknown:
    raise ConfigError(f"augmentation preset {augment!r} takes no option {unknown[0]!r}; its options: "
                      f"{', '.join(sorted(PRESET_KWARGS[augment]))}")
  if not isinstance(image_size, int) or image_size < 1:
    raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
  flip = bool(kwargs.get("flip", True))
  if augment == "inception":
    area, aspect = tuple(kwargs.get("area_range", (0.08, 1.0))), tuple(kwargs.get("aspect_range", (3 / 4, 4 / 3)))
    if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
      raise ConfigError(f"area_range must be (min, max) with 0 < min <= max <= 1, got {area}")
    if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
      raise ConfigError(f"aspect_range must be (min, max) with 0 < min <= max, got {aspect}")
    methods = tuple(kwargs.get("interpolations", INTERPOLATIONS))
    bad = [m for m in methods if m not in INTERPOLATIONS]
    if not methods or bad:
      raise ConfigError(f"interpolations must be a non-empty subset of {INTERPOLATIONS}, got {methods}")
    return Preset("inception", image_size, flip, (float(area[0]), float(area[1])),
                  (float(aspect[0]), float(aspect[1])), int(kwargs.get("max_attempts", 10)), methods)
  if augment == "scale_jitter":
    scale_min = int(kwargs.get("scale_min", round(image_size * 256 / 224)))
    scale_max = int(kwargs.get("scale_max", round(image_size * 512 / 224)))
    if not image_size <= scale_min <= scale_max:
      raise ConfigError(f"scale_jitter needs image_size <= scale_min <= scale_max, got "
                        f"{image_size}, [{scale_min}, {scale_max}]")
    return Preset("scale_jitter", image_size, flip, scale_min=scale_min, scale_max=scale_max)
  resize_size = int(kwargs.get("resize_size", round(image_size / 0.875)))
  if resize_size < image_size:
    raise ConfigError(f"alexnet: resize_size {resize_size} must be >= image_size {image_size}")
  return Preset("alexnet", image_size, flip, resize_size=resize_size)


# ----------------------------------------------------------------------------
# The per-example source: position -> record -> plan.


def _seed_words(seed: int) -> list[int]:
  seed = int(seed) & ((1 << 64) - 1)
  return [seed & 0xFFFFFFFF, seed >> 32]


def share_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of a process's contiguous share (the sizes of tfds.even_splits)."""
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (1 if process_index < extra else 0)


def epoch_permutation(seed: int, process_index: int, epoch: int, size: int) -> np.ndarray:
  """The order of a process's share in `epoch`: a function of (seed, process, epoch)."""
  rng = np.random.default_rng(_seed_words(seed) + [process_index, _EPOCH_STREAM, epoch])
  return rng.permutation(size)


def example_rng(seed: int, process_index: int, position: int) -> np.random.Generator:
  """The generator of the example at stream position t = epoch * share size + place."""
  return np.random.default_rng(_seed_words(seed) + [process_index, _EXAMPLE_STREAM, position])


# DALI's enum values (nvidia.dali.types.DALIInterpType), kept here so the source needs no DALI.
_INTERP_CODE = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 4}


class ExampleSource:
  """`fn.external_source` callback: SampleInfo -> one example's encoded image, plan and label.

  Stateless apart from caches (open files, the current epoch's permutation),
  so DALI may call it from parallel workers; the sample at (iteration, row)
  is example `t = (start_step + iteration) * local_batch + row_offset + row`
  of this process's endless stream.
  """

  def __init__(self, split: PreparedSplit, indices: Sequence[np.ndarray], preset: Preset, *,
               seed: int, process_index: int, process_count: int, local_batch: int,
               start_step: int, row_offset: int = 0):
    self.split, self.preset = split, preset
    self.seed, self.process_index = seed, process_index
    self.local_batch, self.start_step, self.row_offset = local_batch, start_step, row_offset
    self.share_start, share_stop = share_bounds(split.num_examples, process_index, process_count)
    self.share_size = share_stop - self.share_start
    self.first_example = np.cumsum([0] + list(split.shard_lengths))
    self.indices = list(indices)
    self._files: dict[int, int] = {}
    self._epoch: tuple[int, np.ndarray] | None = None
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_files={}, _epoch=None, _lock=None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  # -- positions ----------------------------------------------------------------
  def position(self, iteration: int, row: int) -> int:
    return (self.start_step + iteration) * self.local_batch + self.row_offset + row

  def example_at(self, position: int) -> int:
    """The split-wide example number at stream position `position`."""
    epoch, place = divmod(position, self.share_size)
    with self._lock:
      if self._epoch is None or self._epoch[0] != epoch:
        self._epoch = (epoch, epoch_permutation(self.seed, self.process_index, epoch, self.share_size))
      order = self._epoch[1]
    return self.share_start + int(order[place])

  def describe(self, example: int) -> str:
    shard = int(np.searchsorted(self.first_example, example, side="right")) - 1
    record = example - int(self.first_example[shard])
    return (f"example {example} of {self.split.dataset!r} split {self.split.split!r} "
            f"(record {record} of {self.split.files[shard]})")

  # -- reading --------------------------------------------------------------------
  def read(self, example: int) -> tuple[np.ndarray, int]:
    """(encoded image bytes as uint8, label) of a split-wide example number."""
    shard = int(np.searchsorted(self.first_example, example, side="right")) - 1
    offset, size = self.indices[shard][example - int(self.first_example[shard])]
    fd = self._files.get(shard)
    if fd is None:
      fd = self._files[shard] = os.open(self.split.files[shard], os.O_RDONLY)
    record = os.pread(fd, int(size), int(offset))
    try:
      if len(record) != size:
        raise DataError("the record is shorter than its index says")
      features = parse_example(memoryview(record)[_RECORD_HEADER:int(size) - _RECORD_FOOTER])
      image = features.get(self.split.image_key)
      label = features.get(self.split.label_key)
      if not image or not label:
        raise DataError(f"it has no {self.split.image_key!r} image or {self.split.label_key!r} label")
    except DataError as error:
      raise DataError(f"cannot read {self.describe(example)}: {error}; prepare the dataset again") from None
    label = int(label[0])
    if not 0 <= label < self.split.num_classes:
      raise DataError(f"label {label} is outside [0, {self.split.num_classes}) at "
                      f"{self.describe(example)}")
    return np.frombuffer(image[0], np.uint8), label

  def sample(self, position: int) -> tuple[np.ndarray, int, CropPlan]:
    example = self.example_at(position)
    encoded, label = self.read(example)
    hw = image_hw(encoded)
    if hw is None:
      raise DataError(f"{self.describe(example)} is not a readable JPEG or PNG (no image size in "
                      "its header); fix or remove the image and prepare the dataset again")
    try:
      plan = self.preset.plan(example_rng(self.seed, self.process_index, position), *hw)
    except ValueError as error:
      raise DataError(f"{self.describe(example)} ({hw[0]}x{hw[1]}) is too small for the "
                      f"{self.preset.name!r} crop of {self.preset.image_size}: {error}") from None
    return encoded, label, plan

  def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
    encoded, label, plan = self.sample(self.position(sample_info.iteration, sample_info.idx_in_batch))
    return plan_arrays(encoded, label, plan)


def plan_arrays(encoded: np.ndarray, label: int, plan: CropPlan) -> tuple[np.ndarray, ...]:
  """The external source's outputs for one example (the order `_graph` expects)."""
  return (encoded, np.asarray(plan.anchor, np.int32), np.asarray(plan.shape, np.int32),
          np.asarray(plan.roi_start, np.float32), np.asarray(plan.roi_end, np.float32),
          np.asarray(plan.flip, np.int32), np.asarray(_INTERP_CODE[plan.interpolation], np.int32),
          np.asarray(label, np.int32), np.asarray(plan.window, np.int32))


# ----------------------------------------------------------------------------
# The DALI graph and the iterator.


def _import_dali():
  try:
    import nvidia.dali  # pylint: disable=import-outside-toplevel
    from nvidia.dali import fn, types  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ConfigError(f"the DALI input needs NVIDIA DALI, which is not installed ({error}); "
                      f"install it with {INSTALL_HINT}, or use cnnjax.data.train_iterator") from error
  return nvidia.dali, fn, types


def build_pipeline(source, *, batch_size: int, image_size: int, antialias: bool, device: str = "cpu",
                   device_id: int | None = None, num_threads: int = 2, py_workers: int = 0,
                   prefetch: int = 2):
  """A built DALI pipeline: per-example (encoded, plan arrays...) from `source` -> image, label, window.

  `source` is a per-sample callable (SampleInfo -> `plan_arrays`). device
  "gpu" decodes with nvJPEG ("mixed") on `device_id`; "cpu" runs every
  operator on the CPU (device_id None).
  """
  dali, fn, types = _import_dali()
  gpu = device == "gpu"

  @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads,
                     device_id=device_id if gpu else None, prefetch_queue_depth=prefetch,
                     py_num_workers=max(1, py_workers), py_start_method="spawn",
                     exec_dynamic=True)
  def graph():
    (encoded, anchor, shape, roi_start, roi_end, flip, interpolation, label,
     window) = fn.external_source(source, num_outputs=9, batch=False, parallel=py_workers > 0,
                                  dtype=[types.UINT8] + [None] * 8)
    # EXIF orientation is ignored, as TensorFlow's decoders ignore it; fancy
    # upsampling on the GPU matches libjpeg-turbo's (and TF's) chroma.
    decoder_options = {"jpeg_fancy_upsampling": True} if gpu else {}
    images = fn.decoders.image_slice(encoded, anchor, shape, axis_names="HW",
                                     device="mixed" if gpu else "cpu", output_type=types.RGB,
                                     adjust_orientation=False, **decoder_options)
    images = fn.resize(images, size=[image_size, image_size], roi_start=roi_start, roi_end=roi_end,
                       interp_type=fn.cast(interpolation, dtype=types.INTERP_TYPE),
                       antialias=antialias)
    images = fn.flip(images, horizontal=flip)
    return images, label, window

  pipeline = graph()
  pipeline.build()
  return pipeline


def render_plans(examples: Sequence[tuple[bytes | np.ndarray, CropPlan]], *, image_size: int,
                 antialias: bool, device: str = "cpu") -> np.ndarray:
  """uint8 [n, S, S, 3]: the DALI graph applied to explicit (encoded image, plan) pairs.

  For checks against other pipelines and for inspection; training uses
  `train_iterator`.
  """
  arrays = [plan_arrays(np.frombuffer(bytes(e), np.uint8), 0, p) for e, p in examples]

  def source(sample_info):
    return arrays[sample_info.idx_in_batch]

  pipeline = build_pipeline(source, batch_size=len(arrays), image_size=image_size,
                            antialias=antialias, device=device, device_id=0, num_threads=1,
                            prefetch=1)
  images = pipeline.run()[0]
  return np.stack([np.array(images.as_cpu()[i]) for i in range(len(arrays))])


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index must be in [0, process_count); got {process_index} of {process_count}")
  return int(process_index), int(process_count)


def _device_rows(sharding, global_batch: int, local_batch: int) -> list[tuple[Any, int, int]]:
  """(device, first row in this process's batch, rows) per addressable device of a batch sharding."""
  slices = []
  for device, index in sharding.addressable_devices_indices_map((global_batch,)).items():
    rows = index[0] if index else slice(None)
    start, stop, _ = rows.indices(global_batch)
    slices.append((start, stop, device))
  slices.sort(key=lambda s: (s[0], s[2].id))
  distinct = sorted({(a, b) for a, b, _ in slices})
  offsets, offset = {}, 0
  for start, stop in distinct:
    offsets[(start, stop)] = offset
    offset += stop - start
  if offset != local_batch:
    raise ConfigError(f"the sharding gives this process {offset} rows of the global batch "
                      f"{global_batch}, not global_batch_size / process_count = {local_batch}; "
                      "shard the batch dimension over the 'data' mesh axis")
  return [(device, offsets[(a, b)], b - a) for a, b, device in slices]


def _decode_failure(error: Exception, sources: Sequence[ExampleSource], step: int,
                    rows: Sequence[int], lookahead: int) -> DataError:
  """A DataError naming the example of `step` that DALI could not decode (found by decoding each)."""
  dali, fn, types = _import_dali()
  candidates = []  # this step's examples, then those of the steps DALI may have prefetched
  for ahead in range(1 + lookahead):
    for source, count in zip(sources, rows):
      for row in range(count):
        position = (step + ahead) * source.local_batch + source.row_offset + row
        candidates.append((source, source.example_at(position)))

  encoded_candidates = [source.read(example)[0] for source, example in candidates]

  # Synchronous and one example per run, so that run k fails exactly when candidate k does.
  @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1,
                     exec_pipelined=False, exec_async=False)
  def probe():
    encoded = fn.external_source(lambda info: encoded_candidates[info.iteration], batch=False,
                                 dtype=types.UINT8)
    return fn.decoders.image(encoded, device="cpu", adjust_orientation=False)

  pipeline = probe()
  pipeline.build()
  for source, example in candidates:
    try:
      pipeline.run()
    except Exception as decode_error:  # noqa: BLE001 - DALI reports decoder errors as RuntimeError
      return DataError(f"cannot decode {source.describe(example)} ({_brief(decode_error)}); "
                       "fix or remove the image and prepare the dataset again")
  return DataError(f"the DALI pipeline failed at step {step}: {_brief(error)}")


def _brief(error: Exception, limit: int = 300) -> str:
  """DALI's multi-line error text on one line, shortened."""
  text = " ".join(str(error).split())
  return text if len(text) <= limit else text[:limit] + "..."



def train_iterator(dataset: str, *, global_batch_size: int, data_dir: str | os.PathLike | None = None,
                   split: str = "train", augment: str = "inception",
                   augment_kwargs: dict[str, Any] | None = None, image_size: int = 224,
                   seed: int = 0, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None, sharding=None, device: str = "auto",
                   num_threads: int | None = None, py_workers: int = 0, prefetch: int = 2,
                   index_dir: str | None = None) -> Iterator[dict[str, Any]]:
  """Endless stream of this process's share of each global training batch, decoded by DALI.

  Yields {"image": uint8 [b, S, S, 3], "label": int32 [b], "window": int32
  [b, 4]}, b = global_batch_size // process_count, as
  `cnnjax.data.train_iterator(..., device_preprocessing=True)` does (numpy),
  or, given `sharding` (a batch sharding of the global batch), global
  `jax.Array`s of shape [global_batch_size, ...] placed with it.

  Args:
    dataset, data_dir, split: a prepared dataset (see `dataset_directory`).
    augment, augment_kwargs, image_size: the preset (PRESETS) and its options;
      colour options (photometric, pca_color, ...) are accepted and left to
      the step's `DeviceInput`, as on the tf.data path.
    seed, start_step, process_index, process_count: the stream (module docstring).
    sharding: place batches with it (on GPU: one DALI pipeline per local device,
      decoded into that device's memory).
    device: "gpu" (nvJPEG), "cpu", or "auto": "gpu" when JAX's default backend is.
    num_threads: DALI's CPU threads per pipeline (default: the CPU count, at most 8).
    py_workers: processes running the per-example Python reads in parallel
      (0: DALI's own thread; more helps when one core cannot keep up).
    prefetch: batches each pipeline prepares ahead.
    index_dir: where index files go (default beside the data, else ~/.cache).
  """
  preset = make_preset(augment, image_size, augment_kwargs)
  process_index, process_count = _process(process_index, process_count)
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ConfigError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                      f"process count {process_count}")
  if start_step < 0:
    raise ConfigError(f"start_step must be >= 0, got {start_step}")
  if device not in ("auto", "gpu", "cpu"):
    raise ConfigError(f"device must be 'auto', 'gpu' or 'cpu', got {device!r}")
  _import_dali()
  local_batch = global_batch_size // process_count
  prepared = prepared_split(dataset, data_dir, split)
  start, stop = share_bounds(prepared.num_examples, process_index, process_count)
  if stop <= start:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples for process "
                    f"{process_index} of {process_count} ({prepared.num_examples} in all)")
  indices = [record_index(f, n, index_dir) for f, n in zip(prepared.files, prepared.shard_lengths)]
  if device == "auto":
    import jax  # pylint: disable=import-outside-toplevel
    device = "gpu" if jax.default_backend() == "gpu" else "cpu"
  num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
  common = dict(seed=seed, process_index=process_index, process_count=process_count,
                local_batch=local_batch, start_step=start_step)
  if device == "gpu" and sharding is not None:
    placements = _device_rows(sharding, global_batch_size, local_batch)
  else:
    placements = [(None, 0, local_batch)]
  sources = [ExampleSource(prepared, indices, preset, row_offset=offset, **common)
             for _, offset, _ in placements]
  pipelines = [build_pipeline(source, batch_size=rows, image_size=image_size,
                              antialias=preset.antialias, device=device,
                              device_id=getattr(dev, "local_hardware_id", None) or 0,
                              num_threads=num_threads, py_workers=py_workers, prefetch=prefetch)
               for source, (dev, _, rows) in zip(sources, placements)]
  return _batches(pipelines, sources, placements, start_step, sharding, global_batch_size,
                  device == "gpu" and sharding is not None, prefetch)


def _batches(pipelines, sources, placements, start_step: int, sharding, global_batch: int,
             on_devices: bool, prefetch: int) -> Iterator[dict[str, Any]]:
  step = start_step
  while True:
    try:
      outputs = [pipeline.run() for pipeline in pipelines]
    except DataError:
      raise
    except Exception as error:  # noqa: BLE001 - DALI raises RuntimeError for decoder failures
      raise _decode_failure(error, sources, step, [rows for _, _, rows in placements],
                            prefetch) from error
    if on_devices:
      yield _device_batch(outputs, placements, sharding, global_batch)
    else:
      (images, labels, windows), = outputs
      batch = {"image": np.array(images.as_cpu().as_array()),
               "label": np.array(labels.as_array()), "window": np.array(windows.as_array())}
      if sharding is not None:
        import jax  # pylint: disable=import-outside-toplevel
        batch = {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
                 for k, v in batch.items()}
      yield batch
    step += 1


def _device_batch(outputs, placements, sharding, global_batch: int) -> dict[str, Any]:
  """Global jax.Arrays from each device's pipeline outputs (images stay in device memory)."""
  import jax  # pylint: disable=import-outside-toplevel
  images, labels, windows = [], [], []
  for (image_list, label_list, window_list), (device, _, _) in zip(outputs, placements):
    # A copy: DALI reuses its output buffers once the pipeline runs again.
    images.append(jax.dlpack.from_dlpack(image_list.as_tensor()).copy())
    labels.append(jax.device_put(np.array(label_list.as_array()), device))
    windows.append(jax.device_put(np.array(window_list.as_array()), device))
  shape = images[0].shape[1:]
  return {"image": jax.make_array_from_single_device_arrays((global_batch,) + shape, sharding, images),
          "label": jax.make_array_from_single_device_arrays((global_batch,), sharding, labels),
          "window": jax.make_array_from_single_device_arrays((global_batch, 4), sharding, windows)}
