"""Local image folders ("image_folder:<path>") as a prepared tfds dataset.

Layout (the class of an image is the name of its folder):

    <path>/train/<class>/<image>        splits are the sub-folders named
    <path>/val/<class>/<image>          train, val, validation or test
    ...
  or, without split folders:
    <path>/<class>/<image>              every image is split by a stable hash
                                        of its relative path: 1 in 10 goes to
                                        "val", the rest to "train"; adding
                                        images never moves existing ones

Images may be JPEG, PNG, GIF, BMP, WebP or TIFF (by extension; other files
are ignored). Preparation reads every image once with Pillow, through a tfds
builder of ours, into TFRecords under `<data_dir>/cnnjax_image_folder/<key>/`
(key: a hash of the folder path, its file list with sizes and mtimes, and
`on_bad_image`), so that a changed folder is prepared anew and the result
flows through exactly the code path of any tfds dataset. RGB JPEGs and PNGs
are stored byte for byte (fused JPEG decode-and-crop stays possible); grey,
CMYK, palette and 16-bit images are converted to 8-bit RGB (16-bit samples
divided by their bit depth's maximum, 65535, or by the PNG sBIT chunk's
when present: never by what the image happens to contain), transparent ones
composited on white, and re-encoded (JPEG quality 95 if they were JPEG, else
lossless PNG).

An unreadable image (zero bytes, truncated or corrupt data, not an image)
either aborts preparation with a DataError naming the file
(on_bad_image="raise", the default) or is left out and counted
(on_bad_image="skip"; `DatasetInfo.skipped_images`, and the paths are kept in
the prepared dataset's metadata). tfds prepares into a temporary directory
and renames it when complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os

import tensorflow_datasets as tfds

from cnnjax.data import _tf_setup  # noqa: F401
from cnnjax.errors import DataError
from cnnjax.preprocessing.folders import (FLAT_LAYOUT_VAL_FRACTION, IMAGE_EXTENSIONS,  # noqa: F401
                                          ON_BAD_IMAGE, SPLIT_FOLDER_NAMES, FolderLayout,
                                          scan_folder)

_CHUNK = 256


class BadImageError(Exception):
  """An image file that cannot be read as an image."""


def load_as_rgb_bytes(path: str) -> bytes:
  """The encoded bytes of `path` as an 8-bit RGB JPEG or PNG (BadImageError if unreadable)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel

  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise BadImageError("zero-byte file")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format, mode = image.format, image.mode
      if image_format in ("JPEG", "PNG") and mode == "RGB":
        if image_format == "JPEG":
          # Decoding at 1/8 scale still walks the whole entropy-coded stream
          # (so truncation and corruption are caught) at a fraction of the cost.
          image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return data
      image.load()
      rgb = _to_rgb(image, data)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
          Image.DecompressionBombError) as error:
    raise BadImageError(f"{type(error).__name__}: {error}") from error
  buffer = io.BytesIO()
  if image_format == "JPEG":
    rgb.save(buffer, format="JPEG", quality=95)
  else:
    rgb.save(buffer, format="PNG")
  return buffer.getvalue()


def _to_rgb(image, data: bytes = b""):
  """8-bit RGB, compositing transparency over white and scaling 16-bit data by its bit depth."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    import numpy as np  # pylint: disable=import-outside-toplevel
    bits = integer_bit_depth(image, data)
    significant = png_significant_bits(data) if image.format == "PNG" else None
    values = np.asarray(image, dtype=np.float64)
    if significant is not None and significant < bits:
      # The sample's top `significant` bits carry the value (PNG 11.3.3.4).
      values = np.floor(values / 2.0 ** (bits - significant))
      bits = significant
    image = Image.fromarray(round_half_up(np.clip(values * (255.0 / (2.0 ** bits - 1)), 0, 255)))
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA"):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def integer_bit_depth(image, data: bytes = b"") -> int:
  """Bits per sample of an integer-mode Pillow image, from its format, never its content."""
  if image.mode.startswith("I;16") or image.format == "PNG":
    return 16  # a PNG's integer samples are 16-bit (8-bit ones open as "L")
  tags = getattr(image, "tag_v2", None)
  if tags is not None and 258 in tags:  # TIFF BitsPerSample
    depth = tags[258]
    return int(depth[0] if isinstance(depth, tuple) else depth)
  return 32


def png_significant_bits(data: bytes) -> int | None:
  """The largest colour-channel value of a PNG's sBIT chunk (None without one)."""
  if not data.startswith(b"\x89PNG\r\n\x1a\n"):
    return None
  offset = 8
  while offset + 8 <= len(data):
    length = int.from_bytes(data[offset:offset + 4], "big")
    kind = data[offset + 4:offset + 8]
    if kind == b"sBIT":
      payload = data[offset + 8:offset + 8 + length]
      colour_type = data[25] if len(data) > 25 else 0
      channels = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(colour_type, len(payload))
      return max(payload[:channels]) if payload else None
    if kind in (b"IDAT", b"IEND"):
      return None  # sBIT must precede the image data
    offset += 12 + length
  return None


def round_half_up(values):
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.floor(values + 0.5).astype(np.uint8)


class CnnjaxImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A folder of class sub-folders, prepared as a tfds dataset (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, layout: FolderLayout, on_bad_image: str, **kwargs):
    self._layout = layout
    self._on_bad_image = on_bad_image
    super().__init__(config=tfds.core.BuilderConfig(name=layout.key), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Image folder {self._layout.root}",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=list(self._layout.class_names)),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata["root"] = self._layout.root
    self.info.metadata["skipped_images"] = []
    return {split: self._generate_examples(files) for split, files in self._layout.splits.items()}

  def _generate_examples(self, files):
    root = self._layout.root
    workers = min(32, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      for start in range(0, len(files), _CHUNK):
        chunk = files[start:start + _CHUNK]
        loaded = pool.map(_try_load, [os.path.join(root, relative) for relative, _ in chunk])
        for (relative, class_name), (encoded, problem) in zip(chunk, loaded):
          path = os.path.join(root, relative)
          if problem is not None:
            if self._on_bad_image == "raise":
              raise DataError(f"unreadable image {path}: {problem}; fix or delete the file, "
                              "or pass on_bad_image='skip' to leave such files out (they are counted)")
            logging.warning("skipping unreadable image %s: %s", path, problem)
            self.info.metadata["skipped_images"].append(path)
            continue
          yield relative, {"image": encoded, "label": class_name, "file_name": relative}


def _try_load(path: str) -> tuple[bytes | None, str | None]:
  try:
    return load_as_rgb_bytes(path), None
  except BadImageError as error:
    return None, str(error)
  except OSError as error:  # e.g. permission denied
    return None, f"{type(error).__name__}: {error}"


def image_folder_builder(path: str, data_dir: str, *, on_bad_image: str = "raise"):
  """The (possibly not yet prepared) builder of an image folder."""
  layout = scan_folder(path, on_bad_image)
  return CnnjaxImageFolder(layout, on_bad_image,
                           data_dir=data_dir)


def read_skipped_images(builder) -> list[str]:
  """Paths left out (on_bad_image="skip") when the folder was prepared."""
  return list(builder.info.metadata.get("skipped_images", []) or [])
