"""DALI training input throughput: images/s of `cnnjax.dali.train_iterator`.

Writes a prepared-dataset folder of ImageNet-sized JPEGs (random smooth
content, default 256 images of 500x375, 10 classes) in the layout tfds
prepares (dataset_info.json, features.json, TFRecords of tf.train.Example),
by hand, so that it runs on hosts without TensorFlow (the record CRCs are
left zero: the DALI input does not read them, tfds would refuse them). Or
reads a dataset that tfds prepared (--dataset, --data-dir). Then counts the
images the iterator yields in --seconds after a warm-up, with DALI on the
GPU (nvJPEG, one pipeline per local device of a batch sharding) or the CPU.

  python benchmarks/dali_pipeline.py [--device auto|cpu|gpu] [--augment inception] [--batch 128]
                                     [--seconds 10] [--threads N] [--py-workers 0]
                                     [--num-images 256 --width 500 --height 375]
                                     [--dataset imagenet2012 --data-dir /data/tfds]

Prints one JSON line: images/s, the settings, the host's cores and load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import struct
import tempfile
import time

import numpy as np


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def serialize_example(image: bytes, label: int) -> bytes:
  """tf.train.Example{image: bytes_list, label: int64_list}, serialized by hand."""
  image_feature = _field(1, _field(1, image))  # Feature.bytes_list{value}
  label_feature = _field(3, _field(1, _varint(label)))  # Feature.int64_list{packed value}
  entries = (_field(1, _field(1, b"image") + _field(2, image_feature))
             + _field(1, _field(1, b"label") + _field(2, label_feature)))
  return _field(1, entries)


def write_prepared_jpegs(directory: str, num_images: int, width: int, height: int,
                         num_classes: int = 10, seed: int = 0) -> str:
  """A prepared 'train' split of JPEGs in tfds' layout; returns its folder."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  name = "dali_benchmark"
  with open(os.path.join(directory, f"{name}-train.tfrecord-00000-of-00001"), "wb") as f:
    for i in range(num_images):
      coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
      pixels = np.clip(np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3)), 0, 255)
      buffer = io.BytesIO()
      Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
      record = serialize_example(buffer.getvalue(), i % num_classes)
      f.write(struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4)
  info = {"name": name, "fileFormat": "tfrecord", "version": "1.0.0",
          "splits": [{"name": "train", "shardLengths": [str(num_images)],
                      "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"}],
          "supervisedKeys": {"tuple": {"items": [{"featureKey": "image"}, {"featureKey": "label"}]}}}
  features = {"featuresDict": {"features": {
      "image": {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image"},
      "label": {"pythonClassName": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
                "classLabel": {"numClasses": str(num_classes)}}}}}
  with open(os.path.join(directory, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  with open(os.path.join(directory, "features.json"), "w") as f:
    json.dump(features, f)
  return directory


def measure(dataset: str, data_dir: str | None, args) -> dict:
  import jax
  from cnnjax import dali
  device = args.device
  if device == "auto":
    device = "gpu" if jax.default_backend() == "gpu" else "cpu"
  sharding = None
  if device == "gpu":
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  iterator = dali.train_iterator(
      dataset, data_dir=data_dir, global_batch_size=args.batch * jax.process_count(),
      augment=args.augment, image_size=args.image_size, sharding=sharding, device=device,
      num_threads=args.threads, py_workers=args.py_workers, seed=0)
  for _ in range(args.warmup):
    jax.block_until_ready(next(iterator)["image"])
  images, start = 0, time.perf_counter()
  while time.perf_counter() - start < args.seconds:
    batch = next(iterator)
    images += batch["image"].shape[0]
  jax.block_until_ready(batch["image"])
  elapsed = time.perf_counter() - start
  return {"images_per_second": round(images / elapsed, 1), "images": images,
          "seconds": round(elapsed, 2), "device": device,
          "accelerators": [d.device_kind for d in jax.local_devices()] if device == "gpu" else [],
          "batch": args.batch, "augment": args.augment, "image_size": args.image_size,
          "threads": args.threads or min(8, os.cpu_count() or 1), "py_workers": args.py_workers}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
  parser.add_argument("--augment", default="inception", choices=("inception", "scale_jitter", "alexnet"))
  parser.add_argument("--batch", type=int, default=128, help="per-process batch")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--warmup", type=int, default=3, help="batches before the clock starts")
  parser.add_argument("--threads", type=int, default=None, help="DALI CPU threads per pipeline")
  parser.add_argument("--py-workers", type=int, default=0)
  parser.add_argument("--num-images", type=int, default=256)
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--dataset", default=None, help="a prepared dataset instead of generated JPEGs")
  parser.add_argument("--data-dir", default=None)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    if args.dataset:
      dataset, data_dir = args.dataset, args.data_dir
    else:
      dataset = write_prepared_jpegs(os.path.join(scratch, "dali_benchmark", "1.0.0"),
                                     args.num_images, args.width, args.height)
      data_dir = None
    load_before = os.getloadavg()
    result = measure(dataset, data_dir, args)
  result.update(dataset=args.dataset or f"{args.num_images} generated {args.width}x{args.height} JPEGs",
                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                load_average_before=[round(v, 2) for v in load_before],
                load_average_after=[round(v, 2) for v in os.getloadavg()],
                utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
