"""What tfds prepared, read without TensorFlow: the split's shard files, a record index per
shard, tf.train.Example parsed by hand, image sizes from their headers.

Nothing read is trusted: every record's length and data are checked against
their masked CRC32C (the TFRecord format's own checksums, as TensorFlow's
reader checks them), any parse failure is a DataError naming the file and the
record, and an index file records the size and mtime of the shard it
describes, so a shard rewritten in place is indexed anew.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import struct

import google_crc32c
import numpy as np

from cnnjax._atomic import write_atomic
from cnnjax.errors import DataError, close_matches
from cnnjax.preprocessing.folders import (IMAGE_FOLDER_PREFIX, ON_BAD_IMAGE, folder_root,  # noqa: F401
                                          resolve_data_dir, scan_folder)

DIGITS_BUILDER = "cnnjax_digits"
IMAGE_FOLDER_BUILDER = "cnnjax_image_folder"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
RECORD_HEADER, RECORD_FOOTER = 12, 4  # uint64 length + uint32 crc; uint32 crc
_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data) -> int:
  """The TFRecord checksum of `data`: CRC32C, rotated right by 15 bits, plus a constant."""
  crc = google_crc32c.value(bytes(data))
  return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def record_payload(record) -> memoryview:
  """The data of one framed record (length, length CRC, data, data CRC), checked.

  DataError when the frame or a checksum is wrong (the caller names file and record).
  """
  record = memoryview(record)
  if len(record) < RECORD_HEADER + RECORD_FOOTER:
    raise DataError(f"the record is {len(record)} bytes, shorter than its framing")
  length, length_crc = struct.unpack("<QI", record[:RECORD_HEADER])
  if masked_crc32c(record[:8]) != length_crc:
    raise DataError("the length's checksum does not match (damaged data)")
  if RECORD_HEADER + length + RECORD_FOOTER != len(record):
    raise DataError(f"the record says {length} bytes of data, its index "
                    f"{len(record) - RECORD_HEADER - RECORD_FOOTER}")
  payload = record[RECORD_HEADER:RECORD_HEADER + length]
  (data_crc,) = struct.unpack("<I", record[RECORD_HEADER + length:])
  if masked_crc32c(payload) != data_crc:
    raise DataError("the data's checksum does not match (damaged data)")
  return payload

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


def _prepare_hint(dataset: str, root: str) -> str:
  return ("The DALI input reads the TFRecords that tfds prepares; prepare it once on a machine "
          f"with TensorFlow: python -c \"import cnnjax.data; cnnjax.data.dataset_info({dataset!r}, "
          f"data_dir={root!r})\" (or `tfds build`), and copy the data_dir here.")


def _not_prepared(dataset: str, root: str, looked: str) -> DataError:
  return DataError(f"dataset {dataset!r} is not prepared in data_dir {root} (looked for {looked}). "
                   + _prepare_hint(dataset, root))


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
  "digits", "image_folder:<path>" (its preparation of the folder as it is now),
  or the path of a prepared version folder itself.
  """
  root = resolve_data_dir(data_dir)
  if os.path.isfile(os.path.join(os.fspath(dataset), "dataset_info.json")):
    return os.path.abspath(os.fspath(dataset))
  if dataset.startswith(IMAGE_FOLDER_PREFIX):
    return image_folder_directory(dataset[len(IMAGE_FOLDER_PREFIX):], root)
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


def image_folder_directory(folder: str, root: str) -> str:
  """The preparation of an image folder as it is now: the one whose key
  (`cnnjax.preprocessing.folders`: every image's path, class, size and mtime)
  is the folder's current key; DataError when only other states of it are prepared."""
  folder = folder_root(folder)
  prepared = []
  for metadata in glob.glob(os.path.join(root, IMAGE_FOLDER_BUILDER, "*", "*", "metadata.json")):
    try:
      with open(metadata) as f:
        if json.load(f).get("root") == folder:
          prepared.append(os.path.dirname(metadata))
    except (OSError, ValueError):
      continue
  looked = os.path.join(root, IMAGE_FOLDER_BUILDER, "<key>", "<version>")
  if not prepared:
    raise _not_prepared(IMAGE_FOLDER_PREFIX + folder, root, looked)
  keys = set(scan_folder(folder, ON_BAD_IMAGE).keys.values())
  current = [(os.path.getmtime(os.path.join(d, "dataset_info.json")), d) for d in prepared
             if os.path.basename(os.path.dirname(d)) in keys
             and os.path.isfile(os.path.join(d, "dataset_info.json"))]
  if current:
    return max(current)[1]
  raise DataError(
      f"image folder {folder} has changed since it was prepared: {', '.join(sorted(prepared))} "
      "holds other files or classes than the folder now (an image added, removed, rewritten or "
      "moved between classes), and its present state is not prepared. "
      + _prepare_hint(IMAGE_FOLDER_PREFIX + folder, root))


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
# TFRecord index files (the shard's size and mtime, then "offset size" per record).


def scan_records(path: str) -> np.ndarray:
  """int64 [n, 2]: (offset, size) of every record of a TFRecord file, size with its headers."""
  offsets, sizes = [], []
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    offset = 0
    while offset < file_size:
      f.seek(offset)
      header = f.read(RECORD_HEADER)
      if len(header) < RECORD_HEADER:
        break
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != length_crc:
        raise DataError(f"TFRecord file {path}: the length of record {len(offsets)} (byte "
                        f"{offset}) fails its checksum (damaged data); copy or prepare the "
                        "dataset again")
      size = RECORD_HEADER + length + RECORD_FOOTER
      if offset + size > file_size:
        break
      offsets.append(offset)
      sizes.append(size)
      offset += size
  if offset != file_size:
    raise DataError(f"TFRecord file {path} is truncated or corrupt after {len(offsets)} records "
                    f"(byte {offset} of {file_size}); copy or prepare the dataset again")
  return np.stack([np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)], axis=1).reshape(-1, 2)


# The first line of an index file: the shard it describes (its size and mtime); "offset size"
# lines follow, one per record.
INDEX_STAMP = "# cnnjax record index of a shard with"


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


def _shard_stamp(path: str) -> str:
  stat = os.stat(path)
  return f"{INDEX_STAMP} size={stat.st_size} mtime_ns={stat.st_mtime_ns}"


def _read_index(index_file: str, shard: str) -> np.ndarray | None:
  """The index in `index_file` if its first line names `shard`'s current size and mtime."""
  try:
    with open(index_file) as f:
      if f.readline().strip() != _shard_stamp(shard):
        return None
    return np.loadtxt(index_file, dtype=np.int64, ndmin=2, comments="#").reshape(-1, 2)
  except (OSError, ValueError):
    return None


def _write_index(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_atomic(path, text)


def record_index(path: str, expected: int | None = None, index_dir: str | None = None) -> np.ndarray:
  """(offset, size) of each record: from the cached index file, else scanned and cached.

  A cached index is used when it was made from the shard as it is now (its
  size and mtime, stored in the index) and describes it exactly (its last
  record ends at the end of the file, and it has `expected` records).
  """
  file_size = os.path.getsize(path)
  cached = index_path(path, index_dir)

  def valid(index):
    return (index is not None and (expected is None or len(index) == expected)
            and (file_size if len(index) == 0 else int(index[-1].sum())) == file_size)

  index = _read_index(cached, path) if os.path.exists(cached) else None
  if valid(index):
    return index
  index = scan_records(path)
  if expected is not None and len(index) != expected:
    raise DataError(f"TFRecord file {path} holds {len(index)} records but dataset_info.json "
                    f"says {expected}; copy or prepare the dataset again")
  text = _shard_stamp(path) + "\n" + "".join(f"{o} {s}\n" for o, s in index.tolist())
  try:
    _write_index(cached, text)
  except OSError:
    if index_dir is None:  # beside the data failed after all (e.g. a read-only mount): the cache
      _write_index(index_path(path, default_index_dir()), text)
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

  Bytes values are memoryview slices of `record` (no copy). DataError for
  anything that is not a well-formed Example.
  """
  try:
    return _parse_example(memoryview(record))
  except DataError:
    raise
  except (IndexError, ValueError, TypeError, UnicodeDecodeError, struct.error) as error:
    raise DataError(f"not a tf.train.Example ({type(error).__name__}: {error})") from None


def _parse_example(buf: memoryview) -> dict[str, list]:
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
