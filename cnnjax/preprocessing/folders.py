"""An image folder's layout and content key, read from the directory tree alone (no image).

Both back ends need it: tf.data prepares "image_folder:<path>" under
`<data_dir>/cnnjax_image_folder/<key>/` (`cnnjax.data.image_folder`), and
DALI opens exactly the preparation whose key is the folder's key now
(`cnnjax.dali.records`), so a folder changed since it was prepared is never
read from a stale copy. The key hashes the folder's path, `on_bad_image`,
and every image's path relative to it (so its class and split), size and
mtime: an image moved to another class changes it even when no size does.

Needs nothing but Python.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

from cnnjax.errors import DataError

IMAGE_FOLDER_PREFIX = "image_folder:"
SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
ON_BAD_IMAGE = ("raise", "skip")
FLAT_LAYOUT_VAL_FRACTION = 10  # 1 image in 10 goes to "val" when there are no split folders.


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """The scanned folder: class names, per split (relative path, class) pairs, and its key
  under each `on_bad_image` scanned for (`key`: the first)."""
  root: str
  class_names: tuple[str, ...]
  splits: dict[str, tuple[tuple[str, str], ...]]
  keys: dict[str, str]

  @property
  def key(self) -> str:
    return next(iter(self.keys.values()))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """The data directory both back ends read: the argument, else $TFDS_DATA_DIR, else
  ~/tensorflow_datasets (tfds' own default)."""
  chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subfolders(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def folder_root(root: str) -> str:
  """The folder's absolute path; DataError when it is empty or not a directory."""
  if not root.strip():
    # abspath("") is the working directory: an unset shell variable in
    # "image_folder:$DATA" would otherwise train on whatever lies there.
    raise DataError("image_folder: needs a path, e.g. 'image_folder:/data/my_images'")
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DataError(f"image folder {root} does not exist or is not a directory")
  return root


def scan_folder(root: str, on_bad_image: str | Sequence[str] = "raise") -> FolderLayout:
  """Reads the directory structure (not the images); DataError for a bad layout.

  on_bad_image: one value, or several to get the key under each in one scan.
  """
  modes = (on_bad_image,) if isinstance(on_bad_image, str) else tuple(on_bad_image)
  for mode in modes:
    if mode not in ON_BAD_IMAGE:
      raise DataError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {mode!r}")
  root = folder_root(root)
  top = _subfolders(root)
  if not top:
    raise DataError(f"image folder {root} has no class sub-folders; expected "
                    f"{root}/<class>/<image> or {root}/train/<class>/<image>")
  signatures = {mode: hashlib.sha256(f"{root}\0{mode}".encode()) for mode in modes}
  classes: set[str] = set()

  def scan_classes(folder: str, relative_prefix: str):
    class_folders = _subfolders(folder)
    if not class_folders:
      raise DataError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
    found = []
    for class_name in class_folders:
      class_dir = os.path.join(folder, class_name)
      entries = sorted((e for e in os.scandir(class_dir) if e.is_file() and _is_image(e.name)),
                       key=lambda e: e.name)
      if not entries:
        raise DataError(f"class folder {class_dir} has no images (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)}); remove it or add images")
      for entry in entries:
        stat = entry.stat()
        relative = os.path.join(relative_prefix, class_name, entry.name)
        line = f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        for signature in signatures.values():
          signature.update(line)
        found.append((relative, class_name))
      classes.add(class_name)
    return found

  splits = _splits(root, top, scan_classes)
  return FolderLayout(root=root, class_names=tuple(sorted(classes)),
                      splits={k: tuple(v) for k, v in splits.items()},
                      keys={mode: s.hexdigest()[:16] for mode, s in signatures.items()})


def _splits(root: str, top: list[str], scan_classes) -> dict[str, list[tuple[str, str]]]:
  """Per split, (relative path, class): the split folders', or a stable hash's split."""
  split_folders = [name for name in top if name in SPLIT_FOLDER_NAMES]
  splits: dict[str, list[tuple[str, str]]] = {}
  if split_folders:
    others = [name for name in top if name not in SPLIT_FOLDER_NAMES]
    if others:
      raise DataError(f"image folder {root} mixes split folders {split_folders} with other folders "
                      f"{others}; put every class folder inside a split folder "
                      f"({', '.join(SPLIT_FOLDER_NAMES)})")
    for split in split_folders:
      splits[split] = scan_classes(os.path.join(root, split), split)
    return splits
  for relative, class_name in scan_classes(root, ""):
    digest = int(hashlib.sha1(relative.encode()).hexdigest(), 16)
    split = "val" if digest % FLAT_LAYOUT_VAL_FRACTION == 0 else "train"
    splits.setdefault(split, []).append((relative, class_name))
  return splits
