"""Benchmark material: ImageNet-like JPEGs cut from real photographs shipped in packages.

Synthetic noise has the wrong JPEG entropy (decoding time is mostly
Huffman decoding, which depends on the content), so input-pipeline
benchmarks use crops of real photographs instead:

* scikit-learn's `load_sample_images()` (china.jpg, flower.jpg, 640x427);
* scikit-image's `skimage.data` colour photographs that its wheel ships
  (astronaut, chelsea, coffee, hubble_deep_field, ihc, motorcycle_left/right,
  retina, rocket), when scikit-image is installed (`pip install -e ".[bench]"`).

Each output image is a width x height window (default 500x375, ImageNet's
most common size) at a random position of a source photograph, at the
photograph's own resolution (resampling would smooth away the detail that
makes a JPEG expensive to decode; the one source smaller than the window,
chelsea, is scaled up with Lanczos), mirrored half of the time, and saved
as a baseline JPEG at quality 90 with 4:2:0 chroma subsampling, what
ImageNet's files use.
"""

from __future__ import annotations

import os

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
                  "retina", "rocket")


def source_photographs() -> list[tuple[str, np.ndarray]]:
  """(name, uint8 HxWx3) of every colour photograph shipped in the installed packages."""
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  sample = load_sample_images()
  photos = [(os.path.basename(f), np.asarray(image, np.uint8))
            for f, image in zip(sample.filenames, sample.images)]
  try:
    import skimage.data  # pylint: disable=import-outside-toplevel
  except ImportError:
    return photos
  for name in SKIMAGE_PHOTOS:
    photos.append((name, np.asarray(getattr(skimage.data, name)(), np.uint8)[..., :3]))
  left, right, _ = skimage.data.stereo_motorcycle()
  photos += [("motorcycle_left", left), ("motorcycle_right", right)]
  return photos


def make_photo_folder(root: str, num_images: int, width: int = 500, height: int = 375,
                      quality: int = 90, num_classes: int = 10, seed: int = 0) -> dict:
  """Writes root/train/class<k>/<i>.jpg; returns {"sources", "mean_kib", "images"}."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  photos = source_photographs()
  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(num_images):
    name, photo = photos[i % len(photos)]
    full_h, full_w = photo.shape[:2]
    window_w = min(width, full_w, full_h * width / height)
    window_h = window_w * height / width
    top = rng.uniform(0, full_h - window_h)
    left = rng.uniform(0, full_w - window_w)
    image = Image.fromarray(photo).resize(
        (width, height), Image.Resampling.LANCZOS,
        box=(left, top, left + window_w, top + window_h))
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    class_dir = os.path.join(root, "train", f"class{i % num_classes}")
    os.makedirs(class_dir, exist_ok=True)
    path = os.path.join(class_dir, f"{i:05d}_{name.split('.')[0]}.jpg")
    image.save(path, quality=quality, subsampling="4:2:0")
    sizes.append(os.path.getsize(path))
  return {"sources": [name for name, _ in photos], "mean_kib": float(np.mean(sizes)) / 1024,
          "images": num_images}
