"""Where examples come from: dataset names -> prepared tfds builders -> tf.data.

Three kinds of names, one reading path:
  * any tfds image-classification dataset ("cifar10", "imagenet2012", ...);
  * "image_folder:<path>", a local folder of class sub-folders, prepared by
    our own tfds builder (`cnnjax.data.image_folder`);
  * "digits", the embedded offline default (`cnnjax.data.digits`);
  * "shapes[:options]", generated offline (`cnnjax.data.shapes`).

Every source yields `{"image": <encoded bytes or uint8 HxWxC>, "label": int64}`
in a fixed order for this process's share of a split; shuffling, decoding and
augmentation happen later in `cnnjax.data.pipeline`, identically for all.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

import filelock
import tensorflow as tf
import tensorflow_datasets as tfds

from cnnjax import logs
from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.data.bounded import bounded_builder, check_bounded_source, check_max_resolution
from cnnjax.errors import DataError, close_matches
from cnnjax.preprocessing.folders import IMAGE_FOLDER_PREFIX, resolve_data_dir

DIGITS = "digits"

# Remembered at import so we can tell when `tfds.testing.mock_data` has replaced
# preparation with a no-op (then there is nothing to download or check).
_REAL_DOWNLOAD_AND_PREPARE = vars(tfds.core.DatasetBuilder)["download_and_prepare"]


def tfds_is_mocked() -> bool:
  """True inside `tfds.testing.mock_data` (preparation replaced by a no-op)."""
  return vars(tfds.core.DatasetBuilder)["download_and_prepare"] is not _REAL_DOWNLOAD_AND_PREPARE

# Files a manual download must provide, for the datasets we know how to name.
MANUAL_DOWNLOAD_FILES = {
    "imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
}
# Evaluation split by preference; the first one the dataset has is used.
_EVAL_SPLIT_PREFERENCE = ("validation", "val", "test")
# Evaluation split of well-known datasets when split metadata is unavailable (mocked).
_KNOWN_EVAL_SPLITS = {"imagenet2012": "validation", "imagenette": "validation",
                      "imagenet_resized": "validation", "imagewang": "validation"}
# Seconds the download hosts of a dataset that is not on disk get to accept a connection, in
# all: without one, tfds would retry for minutes before failing (no network, a firewall).
DOWNLOAD_CHECK_TIMEOUT_S = 20.0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What training and evaluation code needs to know about a dataset.

  `eval_split` is None when the dataset has nothing but a training split.
  `image_shape` is (H, W, 3) with None for sizes that vary per image; images
  are always delivered with 3 channels. `skipped_images` counts unreadable
  files skipped while preparing an image folder with on_bad_image="skip".
  """
  name: str
  num_classes: int
  train_split: str
  eval_split: str | None
  num_train_examples: int
  num_eval_examples: int
  image_shape: tuple[int | None, int | None, int]
  class_names: tuple[str, ...] | None
  data_dir: str
  splits: dict[str, int]
  skipped_images: int = 0


@dataclasses.dataclass
class Source:
  """A prepared tfds builder plus the facts the pipeline needs to read it."""
  name: str
  builder: Any
  image_key: str
  label_key: str
  num_classes: int
  image_shape: tuple[int | None, int | None, int]
  image_is_encoded: bool
  data_dir: str
  skipped_images: int = 0

  @property
  def is_mocked(self) -> bool:
    return tfds_is_mocked()

  @functools.cached_property
  def identity(self) -> dict[str, Any]:
    """What the prepared data is: its directory, version and files (name, size, mtime).

    Anything derived from this source (a bounded copy, statistics) stores
    this and compares it on open, so a source prepared anew (an image folder
    whose files or classes changed, a dataset rebuilt at the same version)
    never serves a stale derivative, whatever name it was opened by.
    """
    directory = os.fspath(self.builder.data_dir)
    files = []
    if not self.is_mocked and os.path.isdir(directory):
      for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file():
          stat = entry.stat()
          files.append([entry.name, stat.st_size, stat.st_mtime_ns])
    return {"prepared_dir": directory, "version": str(self.builder.version),
            "mocked": self.is_mocked, "files": files}

  @functools.cached_property
  def fingerprint(self) -> str:
    """A short hash of `identity`: the key of anything derived from this source."""
    return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]

  def split_names(self) -> list[str]:
    return list(self.builder.info.splits.keys())

  def default_train_split(self) -> str:
    return "train"

  def default_eval_split(self, required: bool = True) -> str | None:
    names = self.split_names()
    for candidate in _EVAL_SPLIT_PREFERENCE:
      if candidate in names:
        return candidate
    if not names:  # Mocked data: no split metadata, any name is accepted.
      return _KNOWN_EVAL_SPLITS.get(self.builder.name, "test")
    others = [n for n in names if n != "train"]
    if not others:
      if not required:
        return None
      raise DataError(f"dataset {self.name!r} has only a 'train' split; pass split= for "
                      "evaluation explicitly, e.g. split='train[90%:]'")
    return others[0]

  def check_split(self, split: str) -> None:
    names = self.split_names()
    if not names:
      return
    base = split.split("[")[0]
    if base not in names:
      raise DataError(f"dataset {self.name!r} has no split {base!r}; "
                      f"{close_matches(base, names)}")

  def share(self, split: str, process_index: int, process_count: int):
    """This process's disjoint, contiguous share of `split` (tfds even split)."""
    self.check_split(split)
    if process_count == 1:
      return split
    return tfds.even_splits(split, n=process_count)[process_index]

  def num_examples(self, split_or_share) -> int:
    """Examples in a split or share, from metadata (or by counting, when mocked)."""
    if self.split_names():
      return int(self.builder.info.splits[split_or_share].num_examples)
    cardinality = int(self.read(split_or_share).cardinality())
    if cardinality < 0:
      raise DataError(f"cannot tell how many examples {self.name!r} split "
                      f"{split_or_share!r} has (no split metadata)")
    return cardinality

  def read(self, split_or_share) -> tf.data.Dataset:
    """The examples of a split/share in a fixed order, images still encoded.

    The image is left encoded (SkipDecoding) so that (a) examples skipped on
    resume cost no decoding and (b) JPEG crops can be decoded fused with the
    crop (`tf.image.decode_and_crop_jpeg`).
    """
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.image_is_encoded else None
    read_config = tfds.ReadConfig(shuffle_seed=0, interleave_cycle_length=16,
                                  enable_ordering_guard=False, add_tfds_id=False)
    ds = self.builder.as_dataset(split=split_or_share, shuffle_files=False,
                                 decoders=decoders, read_config=read_config)
    image_key, label_key = self.image_key, self.label_key
    return ds.map(lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int64)},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def read_epoch(self, split_or_share, shuffle_seed: tf.Tensor) -> tf.data.Dataset:
    """One epoch of a share with its shard files in an order drawn from `shuffle_seed`.

    tfds' own file shuffling takes a Python seed fixed when the pipeline is
    built; this one takes a tensor, so every epoch of an endless, resumable
    stream gets a fresh file order that depends only on (seed, epoch). Used
    for prepared TFRecord datasets with several shards; otherwise (one shard,
    mocked data) the fixed-order `read` is returned and the caller's shuffle
    buffer does all the mixing.
    """
    instructions = self._file_instructions(split_or_share)
    if instructions is None or len(instructions) < 2:
      return self.read(split_or_share)
    files = tf.constant([os.fspath(i.filename) for i in instructions])
    skips = tf.constant([int(i.skip) for i in instructions], tf.int64)
    takes = tf.constant([int(i.take) for i in instructions], tf.int64)
    order = tf.data.Dataset.from_tensor_slices((files, skips, takes)).shuffle(
        len(instructions), seed=shuffle_seed, reshuffle_each_iteration=False)
    records = order.interleave(
        lambda f, skip, take: tf.data.TFRecordDataset(f, buffer_size=8 << 20).skip(skip).take(take),
        cycle_length=min(16, len(instructions)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    features = self.builder.info.features
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if self.image_is_encoded else None
    image_key, label_key = self.image_key, self.label_key

    def parse(serialized):
      example = features.deserialize_example(serialized, decoders=decoders)
      return {"image": example[image_key], "label": tf.cast(example[label_key], tf.int64)}
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _file_instructions(self, split_or_share):
    if self.is_mocked or not self.split_names():
      return None
    if self.builder.info.file_format != tfds.core.FileFormat.TFRECORD:
      return None
    try:
      instructions = list(self.builder.info.splits[split_or_share].file_instructions)
    except Exception:  # noqa: BLE001 - fall back to tfds' reader
      return None
    if not all(os.path.exists(os.fspath(i.filename)) for i in instructions):
      return None
    return instructions

  def info(self) -> DatasetInfo:
    train, evaluation = self.default_train_split(), self.default_eval_split(required=False)
    splits = {name: int(s.num_examples) for name, s in self.builder.info.splits.items()}
    label_feature = self.builder.info.features[self.label_key]
    return DatasetInfo(
        name=self.name,
        num_classes=self.num_classes,
        train_split=train,
        eval_split=evaluation,
        num_train_examples=splits.get(train) or self.num_examples(train),
        num_eval_examples=(0 if evaluation is None
                           else splits.get(evaluation) or self.num_examples(evaluation)),
        image_shape=self.image_shape,
        class_names=tuple(label_feature.names) if label_feature.names else None,
        data_dir=self.data_dir,
        splits=splits,
        skipped_images=self.skipped_images,
    )


# The network input side for datasets whose images vary in size, when none is asked for.
DEFAULT_VARIABLE_IMAGE_SIZE = 224


def input_size(source: Source, image_size: int | None) -> tuple[int, int | None]:
  """(network input side, the dataset's fixed square side or None)."""
  height, width, _ = source.image_shape
  native = height if (height is not None and height == width) else None
  if image_size is None:
    image_size = native or DEFAULT_VARIABLE_IMAGE_SIZE
  if image_size < 1:
    raise DataError(f"image_size must be positive, got {image_size}")
  return int(image_size), native


def check_training_classes(dataset: str, num_classes: int) -> None:
  """DataError for a training set of fewer than two classes: there is nothing to learn, and
  every prediction would be scored correct."""
  if num_classes < 2:
    raise DataError(f"dataset {dataset!r} has {num_classes} class(es); classification needs at "
                    "least 2 (an image folder needs at least two class sub-folders)")


def dataset_info(dataset: str, data_dir: str | os.PathLike | None = None, *,
                 on_bad_image: str = "raise") -> DatasetInfo:
  """Facts about `dataset` (prepares it first if needed: digits, image folders, downloads)."""
  return get_source(dataset, data_dir, on_bad_image=on_bad_image).info()


# Prepared sources of this process, so that dataset_info, train_iterator and
# every evaluation do not re-open (or, for image folders, re-scan) the data.
_SOURCES: dict[tuple[str, str, str], Source] = {}


@logs.quiet_libraries()
def get_source(dataset: str, data_dir: str | os.PathLike | None = None, *,
               on_bad_image: str = "raise", max_resolution: int = 0) -> Source:
  """Resolves a dataset name to a prepared `Source` (raises DataError naming the fix).

  max_resolution > 0: the copy of the dataset whose images' longer side is
  at most that many pixels, prepared once (`cnnjax.data.bounded`).
  Resolved once per process and data_dir: an image folder changed while the
  process runs is picked up (prepared anew) by the next process.
  """
  if not isinstance(dataset, str) or not dataset:
    raise DataError(f"dataset must be a non-empty name, got {dataset!r}")
  max_resolution = check_max_resolution(max_resolution)
  root = resolve_data_dir(data_dir)
  key = (_absolute_name(dataset), root, on_bad_image, max_resolution)
  if key in _SOURCES and not tfds_is_mocked():
    return _SOURCES[key]
  if max_resolution:
    original = get_source(dataset, root, on_bad_image=on_bad_image)
    builder = bounded_builder(original, max_resolution)
    name = f"{dataset} (max_resolution={max_resolution})"
    _prepare(name, builder, root)
    check_bounded_source(builder, original)
    source = _source_from_builder(name, builder, root, original.skipped_images)
  else:
    source = _open_source(dataset, root, on_bad_image)
  if not tfds_is_mocked():
    _SOURCES[key] = source
  return source


def _absolute_name(dataset: str) -> str:
  """The name with an image folder's path made absolute (a relative one means another folder
  in another working directory)."""
  if dataset.startswith(IMAGE_FOLDER_PREFIX) and dataset[len(IMAGE_FOLDER_PREFIX):].strip():
    path = dataset[len(IMAGE_FOLDER_PREFIX):]
    return IMAGE_FOLDER_PREFIX + os.path.abspath(os.path.expanduser(path))
  return dataset


def _open_source(dataset: str, root: str, on_bad_image: str) -> Source:
  skipped = 0
  if dataset == DIGITS:
    from cnnjax.data.digits import CnnjaxDigits
    builder = CnnjaxDigits(data_dir=root)
  elif dataset == "shapes" or dataset.startswith("shapes:"):
    from cnnjax.data.shapes import shapes_builder
    builder = shapes_builder(dataset, root)
  elif dataset.startswith(IMAGE_FOLDER_PREFIX):
    from cnnjax.data.image_folder import image_folder_builder
    builder = image_folder_builder(dataset[len(IMAGE_FOLDER_PREFIX):], root,
                                   on_bad_image=on_bad_image)
  else:
    builder = _tfds_builder(dataset, root)
  _prepare(dataset, builder, root)
  if dataset.startswith(IMAGE_FOLDER_PREFIX):
    from cnnjax.data.image_folder import read_skipped_images
    skipped = len(read_skipped_images(builder))
  return _source_from_builder(dataset, builder, root, skipped)


def _tfds_builder(name: str, root: str):
  try:
    return tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError as error:
    known = list(tfds.list_builders()) + [DIGITS, IMAGE_FOLDER_PREFIX + "<path>"]
    raise DataError(f"unknown dataset {name!r}: {close_matches(name.split(':')[0].split('/')[0], known)}"
                    " (a local folder of class sub-folders is 'image_folder:/path/to/folder')") from error
  except Exception as error:  # noqa: BLE001 - anything tfds says about a bad name/config
    raise DataError(f"cannot open dataset {name!r} from {root}: {error}") from error


def manual_download_message(name: str, builder, root: str) -> str:
  """How to provide a dataset that tfds cannot download (ImageNet)."""
  manual_dir = os.path.join(root, "downloads", "manual")
  files = MANUAL_DOWNLOAD_FILES.get(builder.name)
  wanted = (" the files " + ", ".join(files)) if files else " the files its instructions name"
  return (
      f"dataset {name!r} must be downloaded by hand: put{wanted} into {manual_dir}/ "
      f"(from the dataset's website after registration), then prepare it once with "
      f"`tfds build {builder.name} --data_dir={root}` "
      f"(or in Python: tfds.builder({builder.name!r}, data_dir={root!r})"
      ".download_and_prepare()). Preparation writes TFRecords beside the archives (~150 GB for ImageNet).")


def preparation_lock(data_dir: str) -> filelock.FileLock:
  """The lock held while `data_dir` is prepared: one process prepares, the others wait.

  It lives in the machine's temporary directory, keyed by the absolute path,
  so that a failed preparation leaves nothing in the data_dir. It orders the
  processes of one machine; hosts sharing a data_dir over a network
  filesystem should have it prepared once beforehand.
  """
  digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:24]
  return filelock.FileLock(os.path.join(tempfile.gettempdir(), f"cnnjax-prepare-{digest}.lock"))


def remove_incomplete(data_dir: str) -> list[str]:
  """Removes what killed preparations of `data_dir` left (tfds' `incomplete.*` folders).

  Call only while holding `preparation_lock(data_dir)`: then no preparation
  of that directory is running.
  """
  parent, version = os.path.split(os.path.normpath(data_dir))
  stale = sorted(glob.glob(os.path.join(glob.escape(parent), f"incomplete.*_{glob.escape(version)}")))
  for path in stale:
    shutil.rmtree(path, ignore_errors=True)
  return stale


def _prepare(name: str, builder, root: str) -> None:
  """Prepares `builder` if needed; never substitutes another dataset on failure.

  Exactly one process prepares a directory; others wait for it and read
  what it wrote.
  """
  if builder.is_prepared():
    return
  if tfds_is_mocked():
    return  # tfds.testing.mock_data: examples are generated, nothing to prepare.
  with preparation_lock(os.fspath(builder.data_dir)):
    if builder.is_prepared():  # prepared by another process while this one waited
      builder.info.read_from_directory(builder.data_dir)
      return
    remove_incomplete(os.fspath(builder.data_dir))
    _prepare_unlocked(name, builder, root)


def _prepare_unlocked(name: str, builder, root: str) -> None:
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    manual_dir = os.path.join(root, "downloads", "manual")
    files = MANUAL_DOWNLOAD_FILES.get(builder.name, ())
    missing = [f for f in files if not os.path.exists(os.path.join(manual_dir, f))]
    if missing or not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise DataError(manual_download_message(name, builder, root)
                      + (f" Missing: {', '.join(missing)}." if missing else ""))
  _check_download_hosts(name, builder, root)
  created = _missing_directories(builder, root)
  print(f"preparing dataset {name!r} in {root} (once) ...", flush=True)
  try:
    with logs.quiet_libraries(drop_prints=True):  # a local folder is not "downloaded"
      builder.download_and_prepare()
  except DataError:
    _remove_empty(created)
    raise
  except Exception as error:  # noqa: BLE001 - network, disk, corrupt archive...
    _remove_empty(created)
    raise DataError(
        f"could not prepare dataset {name!r} into {root}: {type(error).__name__}: {error}. "
        "No other dataset is used in its place; fix the cause (network access, disk space), "
        "or prepare it on a machine with access and copy the data_dir here. "
        "The offline default dataset is 'digits'.") from error


def _downloaded_already(builder, root: str, url: str, info) -> bool:
  """Whether tfds will find `url`'s file on disk (downloads/ or downloads/manual/), not fetch it."""
  downloads = os.path.join(root, "downloads")
  if getattr(info, "filename", None) and os.path.exists(
      os.path.join(downloads, "manual", info.filename)):
    return True
  resource = tfds.core.download.resource
  try:  # tfds' own naming and test (the file and its .INFO beside it)
    name = resource.get_dl_fname(url, info.checksum)
    return any(resource.is_locally_cached(tfds.core.Path(folder) / name)
               for folder in (os.path.join(downloads, builder.name), downloads))
  except Exception:  # noqa: BLE001 - tfds' internals changed: assume a download
    return False


def download_hosts(builder, root: str | None = None) -> list[tuple[str, int]]:
  """(host, port) pairs a download of `builder` connects to: its registered URLs' hosts.

  The URLs are those of the dataset's checksums file (tfds `url_infos`),
  less those already downloaded into `root`'s downloads/ folder; empty when
  tfds registers none (then nothing is checked). With an HTTP(S) proxy
  configured for a URL, the proxy is the host connected to.
  """
  try:
    url_infos = dict(builder.url_infos or {})
  except Exception:  # noqa: BLE001 - a builder without a checksums file
    return []
  proxies = urllib.request.getproxies()
  hosts = []
  for url, info in url_infos.items():
    if root is not None and _downloaded_already(builder, root, url, info):
      continue
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
      continue
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
      parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    default_port = {"https": 443, "http": 80, "ftp": 21}.get(parts.scheme, 443)
    host = (parts.hostname, parts.port or default_port)
    if parts.hostname and host not in hosts:
      hosts.append(host)
  return hosts


def _unreachable(hosts: list[tuple[str, int]], timeout_s: float) -> list[str]:
  """The hosts that refuse, time out or do not resolve within `timeout_s` (in all), with why."""
  deadline = time.monotonic() + timeout_s
  failures = []
  for host, port in hosts:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      failures.append(f"{host}:{port} (not tried: out of time)")
      continue
    try:
      socket.create_connection((host, port), timeout=remaining).close()
    except OSError as error:
      failures.append(f"{host}:{port} ({type(error).__name__}: {error})")
  return failures


def not_prepared_message(name: str, builder, root: str) -> str:
  """How to provide a downloadable dataset on a machine that cannot download it."""
  folder = os.path.join(root, builder.name)
  return (
      f"dataset {name!r} is not prepared in data_dir {root} (looked for {builder.data_dir}) "
      f"and cannot be downloaded from here. Prepare it on a machine with network access: "
      f"python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, "
      f"data_dir='/path/to/data_dir').download_and_prepare()\" (or `tfds build {name} "
      f"--data_dir=/path/to/data_dir`), then copy its folder /path/to/data_dir/{builder.name} "
      f"to {folder}, or point config.input.data_dir (or $TFDS_DATA_DIR) at a directory where it is "
      "prepared. No other dataset is used in its place; the offline default dataset is 'digits'.")


def _check_download_hosts(name: str, builder, root: str) -> None:
  """DataError within DOWNLOAD_CHECK_TIMEOUT_S when a download host cannot be reached."""
  failures = _unreachable(download_hosts(builder, root), DOWNLOAD_CHECK_TIMEOUT_S)
  if failures:
    raise DataError(not_prepared_message(name, builder, root)
                    + f" Unreachable: {', '.join(failures)}.")


def _missing_directories(builder, root: str) -> list[str]:
  """Directories tfds may create while preparing that do not exist yet (deepest first)."""
  candidates = [os.path.join(root, "downloads", "extracted"), os.path.join(root, "downloads")]
  path = os.fspath(builder.data_dir)
  while path.startswith(root + os.sep):
    candidates.append(path)
    path = os.path.dirname(path)
  candidates.append(root)
  return sorted({c for c in candidates if not os.path.exists(c)}, key=len, reverse=True)


def _remove_empty(directories: list[str]) -> None:
  """Removes what a failed preparation left of `directories` (only if empty)."""
  for directory in directories:
    try:
      os.rmdir(directory)
    except OSError:
      pass  # not empty (then not ours to delete) or already gone


def _source_from_builder(name: str, builder, root: str, skipped: int) -> Source:
  features = builder.info.features
  image_key, label_key = _image_and_label_keys(name, builder)
  image_feature = features[image_key]
  label_feature = features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise DataError(f"dataset {name!r}: label feature {label_key!r} is "
                    f"{type(label_feature).__name__}, not a ClassLabel; not an image-classification dataset")
  is_encoded = isinstance(image_feature, tfds.features.Image)
  if not is_encoded and not isinstance(image_feature, tfds.features.Tensor):
    raise DataError(f"dataset {name!r}: image feature {image_key!r} is "
                    f"{type(image_feature).__name__}, expected an Image")
  shape = tuple(image_feature.shape)
  if len(shape) != 3 or shape[-1] not in (1, 3, 4, None):
    raise DataError(f"dataset {name!r}: image feature {image_key!r} has shape {shape}; "
                    "expected (height, width, channels) with 1, 3 or 4 channels")
  return Source(name=name, builder=builder, image_key=image_key, label_key=label_key,
                num_classes=int(label_feature.num_classes), image_shape=(shape[0], shape[1], 3),
                image_is_encoded=is_encoded, data_dir=root, skipped_images=skipped)


def _is_image_feature(feature) -> bool:
  if isinstance(feature, tfds.features.Image):
    return True
  return isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 3


def _image_and_label_keys(name: str, builder) -> tuple[str, str]:
  """The image and label features: the supervised keys, else "image" and "label"."""
  features = builder.info.features
  keys = list(features.keys()) if hasattr(features, "keys") else []
  supervised = builder.info.supervised_keys
  candidates = []
  if (isinstance(supervised, tuple) and len(supervised) == 2
      and all(isinstance(k, str) for k in supervised)):
    candidates.append(supervised)
  candidates.append(("image", "label"))
  image_key = next((i for i, _ in candidates if i in keys and _is_image_feature(features[i])), None)
  label_key = next((l for _, l in candidates if l in keys), None)
  described = ", ".join(f"{k}: {type(features[k]).__name__}" for k in keys)
  if image_key is None:
    raise DataError(f"dataset {name!r} has no image feature ({described}); cnnjax reads "
                    "image-classification datasets with an image and a class label")
  if label_key is None:
    raise DataError(f"dataset {name!r} has no label feature ({described}); cnnjax reads "
                    "image-classification datasets with an image and a class label")
  return image_key, label_key
