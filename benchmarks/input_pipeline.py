"""Input-pipeline throughput: naive (decode whole JPEG, then crop) vs fused decode-and-crop.

Generates a folder of ImageNet-sized JPEGs (random smooth content, default
300 images of 500x375), then measures images/s on ONE CPU core (tf.data with
a private one-thread pool, no parallel map) of

  naive: tf.io.decode_jpeg of the whole image -> Inception crop -> resize 224 -> flip
  fused: tf.image.decode_and_crop_jpeg of the crop window only -> resize 224 -> flip

with the same crop windows (the same stateless seeds), using the ops that
`cnnjax.data.augment` ships; then the cost of each op of the Inception
training preset (`augment.train_ops("inception")`: crop, random-method
resize, flip, photometric distortions, ImageNet normalisation), measured as
the difference between the one-core rates of successive prefixes. It then
runs the full training pipeline
(`train_iterator(augment="inception")` on the folder prepared as an
image_folder dataset) with all cores, and says how many cores one GPU that
consumes 7,500 images/s would need.

  python benchmarks/input_pipeline.py [--num-images 300] [--width 500 --height 375] [--seconds 10] [--rounds 5]
                                      [--no-stages] [--no-full]
  python benchmarks/input_pipeline.py --device-preprocessing [--seconds 10] [--rounds 2]
      (host-finished float32 batches vs uint8 + DeviceInput in a jitted function, per preset)
  python benchmarks/input_pipeline.py --presets [--num-images 300] [--seconds 8] [--rounds 3]
      (real photographs, benchmarks/photos.py; per ImageNet preset, uint8 out, all cores:
       plain tf.data vs train_iterator on the original vs train_iterator on bounded copies
       (max_resolution), alternating rounds; then each copy's pixel error and the decoder
       options' speed and pixel error)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def make_jpeg_folder(root: str, num_images: int, width: int, height: int, seed: int = 0) -> None:
  """root/train/<class>/<i>.jpg with smooth random content (photo-like JPEG sizes)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    class_dir = os.path.join(root, "train", f"class{i % 10}")
    os.makedirs(class_dir, exist_ok=True)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, (height, width, 3))  # texture, so the JPEG is not trivially small
    pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(class_dir, f"{i}.jpg"), quality=90)


def one_core_rate(encoded: list[bytes], fused: bool, seconds: float, image_size: int | None = 224
                  ) -> float:
  """Images/s of decode + Inception crop (+ resize to image_size + flip) on one thread.

  The crop windows are identical for fused and naive (same stateless seeds);
  image_size=None measures decoding and cropping alone.
  """
  import tensorflow as tf
  from cnnjax.data import augment

  crop = augment.inception_crop()
  rest = augment.compose([augment.random_interpolation_resize(image_size, ("bilinear",)),
                          augment.random_flip_left_right()]) if image_size else None

  def process(index, image_bytes):
    rng = tf.stack([tf.constant(0, tf.int64), index])
    image = image_bytes if fused else augment.decode_image(image_bytes)
    image = crop({"image": image, "rng": rng})["image"]
    if rest is None:
      return _one_pixel(image)
    return rest({"image": image, "rng": rng})["image"]

  ds = tf.data.Dataset.from_tensor_slices(encoded).repeat().enumerate().map(process)
  return _one_thread_rate(ds, seconds)


def _one_pixel(image):
  """A scalar that depends on `image`: keeps its computation, fetches ~nothing."""
  import tensorflow as tf
  return tf.reduce_sum(tf.cast(image[:1, :1], tf.float32))


def _one_thread_rate(dataset, seconds: float, batch: int = 32) -> float:
  """Elements/s of `dataset` on one thread (private one-thread pool, no autotuning)."""
  import tensorflow as tf
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  iterator = iter(dataset.batch(batch).with_options(options))
  for _ in range(3):  # warm-up: tracing, thread start
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += int(next(iterator).shape[0])
  return count / (time.perf_counter() - start)


def inception_stage_costs(encoded: list[bytes], seconds: float, rounds: int,
                          image_size: int = 224) -> list[tuple[str, float]]:
  """(op name, milliseconds per image on one core) for each op of the Inception preset.

  Rates of the op-list prefixes are measured in alternating rounds (medians);
  an op's cost is the difference of 1/rate between its prefix and the one
  before. Prefixes that end before the fixed-size resize fetch one pixel.
  """
  import tensorflow as tf
  from cnnjax.data import augment
  from cnnjax.data.stats import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

  ops = augment.train_ops("inception", image_size=image_size, native_size=None,
                          normalize_op=augment.normalize(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB))
  names = ["inception_crop (fused decode)", "random_interpolation_resize", "random_flip_left_right",
           "color_distortion", "normalize (ImageNet mean/std)"]
  assert len(ops) == len(names), "the Inception preset changed; update the stage names"

  def prefix_dataset(count: int):
    composed = augment.compose(ops[:count])

    def process(index, image_bytes):
      image = composed({"image": image_bytes, "rng": tf.stack([tf.constant(0, tf.int64), index])})["image"]
      if image.shape[0] is None:  # variable-size crop
        return _one_pixel(image)
      return image
    return tf.data.Dataset.from_tensor_slices(encoded).repeat().enumerate().map(process)

  rates: dict[int, list[float]] = {count: [] for count in range(len(ops) + 1)}
  for _ in range(rounds):
    for count in rates:
      if count == 0:  # the per-element cost of tf.data itself
        dataset = tf.data.Dataset.from_tensor_slices(encoded).repeat().map(tf.strings.length)
      else:
        dataset = prefix_dataset(count)
      rates[count].append(_one_thread_rate(dataset, seconds / rounds / len(rates)))
  milliseconds = [1000.0 / float(np.median(rates[count])) for count in rates]
  costs = [("tf.data element (no op)", milliseconds[0])]
  costs += [(name, milliseconds[i + 1] - milliseconds[i]) for i, name in enumerate(names)]
  return costs + [("total", milliseconds[-1])]


def full_pipeline_rate(folder: str, data_dir: str, seconds: float, boundary="float32") -> float:
  """Images/s of train_iterator(augment="inception") on all cores.

  boundary="uint8" leaves the distortions and the normalisation to the
  train step (the host yields uint8 crops).
  """
  import cnnjax.data
  return stream_rate(lambda: cnnjax.data.train_iterator(
      f"image_folder:{folder}", data_dir=data_dir, global_batch_size=64, augment="inception",
      normalize="imagenet", process_index=0, process_count=1, boundary=boundary), seconds)


def stream_rate(make_stream, seconds: float) -> float:
  """Examples/s of a fresh batch stream over `seconds`, after three warm-up batches."""
  stream = make_stream()
  for _ in range(3):  # warm-up: tracing, thread pools, autotuning
    next(stream)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += len(next(stream)["label"])
  return count / (time.perf_counter() - start)


def device_preprocessing_rates(dataset: str, data_dir: str, *, augment: str, normalize: str,
                               augment_kwargs=None, image_size: int | None = None,
                               batch_size: int = 64, seconds: float = 10.0, rounds: int = 2
                               ) -> dict[bool, float]:
  """Images/s of train_iterator + the jitted DeviceInput.train, host-prepared vs uint8.

  False: boundary "float32", batches finished on the host (the jitted
  function passes them through); True: boundary "uint8", batches finished
  in the jitted function. Both end in a sum, so the work is done; the model's own
  cost, the same either way, is left out. Fresh iterators per round,
  alternating, two warm-up batches each (compilation, tf.data start-up).
  """
  import jax
  import jax.numpy as jnp
  import cnnjax.data
  finish = cnnjax.data.device_input(dataset, augment=augment, augment_kwargs=augment_kwargs,
                                    normalize=normalize, data_dir=data_dir)
  consume = jax.jit(lambda images, window, step: jnp.sum(
      finish.train(images, jax.random.PRNGKey(0), step, window)))
  rates: dict[bool, list[float]] = {False: [], True: []}
  for _ in range(rounds):
    for device in rates:
      stream = cnnjax.data.train_iterator(
          dataset, data_dir=data_dir, global_batch_size=batch_size, augment=augment,
          augment_kwargs=augment_kwargs, normalize=normalize, image_size=image_size,
          process_index=0, process_count=1, boundary="uint8" if device else "float32")

      def step(number: int) -> int:
        batch = next(stream)
        consume(jnp.asarray(batch["image"]), batch.get("window"), number).block_until_ready()
        return len(batch["label"])
      for number in range(2):
        step(number)
      count, start = 0, time.perf_counter()
      while time.perf_counter() - start < seconds / rounds / 2:
        count += step(count)
      rates[device].append(count / (time.perf_counter() - start))
  return {device: float(np.median(values)) for device, values in rates.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-images", type=int, default=300)
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
  parser.add_argument("--gpu-images-per-second", type=float, default=7500.0)
  parser.add_argument("--no-full", dest="full", action="store_false",
                      help="skip the full train_iterator measurement")
  parser.add_argument("--no-stages", dest="stages", action="store_false",
                      help="skip the per-op costs of the Inception preset")
  parser.add_argument("--presets", action="store_true",
                      help="only the per-preset comparison on real photographs (see the docstring)")
  parser.add_argument("--device-preprocessing", action="store_true",
                      help="only compare host-finished float32 with uint8 batches finished in a "
                           "jitted step (DeviceInput), per preset")
  args = parser.parse_args()
  if args.presets:
    compare_presets(args)
    return
  if args.device_preprocessing:
    compare_device_preprocessing(args)
    return

  with tempfile.TemporaryDirectory() as workdir:
    folder = os.path.join(workdir, "images")
    make_jpeg_folder(folder, args.num_images, args.width, args.height)
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)
    encoded = [open(p, "rb").read() for p in paths]
    mean_kb = np.mean([len(e) for e in encoded]) / 1024
    # Alternate naive and fused in short rounds and keep the medians, so that
    # other load on the machine affects both sides alike.
    rates = {key: [] for key in ("naive_decode", "fused_decode", "naive", "fused")}
    for _ in range(args.rounds):
      for key in rates:
        rates[key].append(one_core_rate(encoded, fused=key.startswith("fused"),
                                        seconds=args.seconds / args.rounds,
                                        image_size=None if key.endswith("decode") else 224))
    naive_decode, fused_decode, naive, fused = (float(np.median(rates[k])) for k in rates)
    stages = inception_stage_costs(encoded, args.seconds, args.rounds) if args.stages else []
    cores = os.cpu_count() or 1
    full = full_device = 0.0
    if args.full:  # alternating halves, host photometric first
      data_dir = os.path.join(workdir, "data")
      host_rates, device_rates = [], []
      for _ in range(2):
        host_rates.append(full_pipeline_rate(folder, data_dir, args.seconds / 2))
        device_rates.append(full_pipeline_rate(folder, data_dir, args.seconds / 2, "uint8"))
      full, full_device = float(np.mean(host_rates)), float(np.mean(device_rates))

  print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} cores, "
        f"python {platform.python_version()}")
  print(f"images: {args.num_images} JPEGs {args.width}x{args.height}, mean {mean_kb:.0f} KiB")
  print("one core, Inception crop windows (8-100% area, aspect 3/4-4/3):")
  print(f"  decode + crop only   naive {naive_decode:8.1f}  fused {fused_decode:8.1f} images/s "
        f"({fused_decode / naive_decode:.2f}x)")
  print(f"  + resize 224 + flip  naive {naive:8.1f}  fused {fused:8.1f} images/s "
        f"({fused / naive:.2f}x)")
  if stages:
    print("one core, Inception preset, cost of each op (ms per image):")
    for name, cost in stages:
      print(f"  {name:32s} {cost:7.3f}")
  if full:
    per_core_full = full / cores
    print(f"full train_iterator(augment='inception') on {cores} cores: {full:.1f} images/s "
          f"({per_core_full:.1f} per core)")
    per_core_device = full_device / cores
    print(f"  at boundary 'uint8' (uint8 crops; distortions + normalisation in the train "
          f"step): {full_device:.1f} images/s ({per_core_device:.1f} per core)")
    print(f"cores for one GPU at {args.gpu_images_per_second:.0f} images/s: "
          f"{args.gpu_images_per_second / fused:.0f} (crop + resize + flip only), "
          f"{args.gpu_images_per_second / per_core_full:.0f} (full pipeline), "
          f"{args.gpu_images_per_second / per_core_device:.0f} (boundary 'uint8')")


# (dataset, preset, augment_kwargs, normalize, image_size, batch size) of the comparison;
# "folder" is the generated JPEG folder.
DEVICE_PREPROCESSING_CASES = (
    ("digits", "cifar", {}, "per_channel", None, 128),     # the quickstart's input
    ("folder", "alexnet", {}, "per_pixel", 224, 32),
    ("folder", "scale_jitter", {}, "per_channel", 224, 32),
    ("folder", "inception", {}, "imagenet", 224, 32),      # distortions: host TF vs jitted JAX
)


def compare_device_preprocessing(args) -> None:
  import jax
  import cnnjax.data
  with tempfile.TemporaryDirectory() as workdir:
    folder = os.path.join(workdir, "images")
    make_jpeg_folder(folder, args.num_images, args.width, args.height)
    data_dir = os.path.join(workdir, "data")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"jax backend {jax.default_backend()}; {args.seconds:.0f} s per case, {args.rounds} rounds")
    for dataset, preset, kwargs, normalize, image_size, batch in DEVICE_PREPROCESSING_CASES:
      name = f"image_folder:{folder}" if dataset == "folder" else dataset
      cnnjax.data.dataset_info(name, data_dir)
      rates = device_preprocessing_rates(name, data_dir, augment=preset, augment_kwargs=kwargs,
                                         normalize=normalize, image_size=image_size,
                                         batch_size=batch, seconds=args.seconds, rounds=args.rounds)
      print(f"  {dataset:6s} {preset:12s} {normalize:11s} host float32 {rates[False]:8.1f}  "
            f"uint8 + jitted DeviceInput {rates[True]:8.1f} images/s ({rates[True] / rates[False]:.2f}x)")


# ----------------------------------------------------------------------------
# Per-preset comparison on real photographs (--presets).

# preset -> the train_iterator variants measured against plain tf.data:
# (augment_kwargs, max_resolution). The bounds follow cnnjax.data.bounded's
# policy: Inception samples crops of any size (320 keeps the average crop
# near its original pixel count; 256 is the aggressive choice); AlexNet
# resizes the shorter side to 256 (341 keeps that for 4:3 images); VGG's
# scale jittering reaches S = 512 (683: above every image of the set, so
# its copy stores the original bytes). Boundary "canvas" leaves crops that fit
# the input unresized for the train step (see `device_resize_cost`).
PRESET_CASES = {
    "inception": (("uint8", 0), ("canvas", 0), ("uint8", 320), ("canvas", 320),
                  ("uint8", 256), ("canvas", 256)),
    "alexnet": (("uint8", 0), ("uint8", 341)),
    "scale_jitter": (("uint8", 0), ("uint8", 683)),
}
INCEPTION_BOUNDS = (320, 256)


def plain_tf_data(source, preset: str, image_size: int, batch_size: int, seed: int = 0):
  """The textbook tf.data pipeline of a preset on the same records, uint8 out (numpy batches).

  read -> tf.io.decode_jpeg (whole image) -> the preset's geometry with
  stock tf.image ops -> flip -> uint8; parallel map, batch, prefetch.
  """
  import tensorflow as tf

  def geometry(index, example):
    rng = tf.stack([tf.constant(seed, tf.int64), index])
    image = tf.io.decode_jpeg(example["image"], channels=3)
    if preset == "inception":
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=rng,
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      image = tf.image.resize(tf.slice(image, begin, size), (image_size, image_size))
    else:
      if preset == "alexnet":
        shorter = tf.constant(round(image_size / 0.875))
      else:  # scale_jitter: S ~ U{256..512} at 224
        shorter = tf.random.stateless_uniform([], rng, round(image_size * 256 / 224),
                                              round(image_size * 512 / 224) + 1, tf.int32)
      hw = tf.cast(tf.shape(image)[:2], tf.float32)
      scale = tf.cast(shorter, tf.float32) / tf.reduce_min(hw)
      image = tf.image.resize(image, tf.cast(tf.round(hw * scale), tf.int32))
      if preset == "alexnet":
        image = tf.image.resize_with_crop_or_pad(image, shorter, shorter)
      image = tf.image.stateless_random_crop(image, (image_size, image_size, 3), rng)
    image = tf.image.stateless_random_flip_left_right(image, rng)
    return {"image": tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            "label": tf.cast(example["label"], tf.int32)}

  ds = source.read("train").repeat().enumerate().map(geometry, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ({k: v.numpy() for k, v in batch.items()} for batch in ds)


def preset_rates(dataset: str, data_dir: str, preset: str, seconds: float, rounds: int,
                 image_size: int = 224, batch_size: int = 64) -> dict[str, float]:
  """images/s (all cores, medians of alternating rounds) of each pipeline of one preset."""
  import cnnjax.data
  from cnnjax.data.sources import get_source
  normalize = "imagenet" if preset == "inception" else "per_channel"

  def ours(boundary: str, max_resolution: int):
    return lambda: cnnjax.data.train_iterator(
        dataset, data_dir=data_dir, global_batch_size=batch_size, augment=preset,
        image_size=image_size, normalize=normalize, process_index=0, process_count=1,
        boundary=boundary, max_resolution=max_resolution)

  source = get_source(dataset, data_dir)
  makers = {"plain tf.data": lambda: plain_tf_data(source, preset, image_size, batch_size)}
  for boundary, bound in PRESET_CASES[preset]:
    name = ("train_iterator" + (f", max_resolution={bound}" if bound else "")
            + (", boundary='canvas'" if boundary == "canvas" else ""))
    makers[name] = ours(boundary, bound)
  for make in makers.values():  # prepare the copies (and statistics) outside the timing
    next(make())
  rates: dict[str, list[float]] = {name: [] for name in makers}
  for _ in range(rounds):
    for name, make in makers.items():
      rates[name].append(stream_rate(make, seconds / rounds))
  return {name: float(np.median(values)) for name, values in rates.items()}


def bounded_pixel_error(dataset: str, data_dir: str, max_resolution: int, image_size: int = 224,
                        num_windows: int = 4, limit: int = 100) -> dict[str, float]:
  """What a bounded copy changes in Inception's network input.

  For each image and a few Inception windows (as fractions of the image), the
  224x224 bilinear resize of the window from the original and from the copy;
  returns their mean absolute difference (0..255) and PSNR (dB).
  """
  import tensorflow as tf
  from cnnjax.data.sources import get_source
  original = get_source(dataset, data_dir)
  bounded = get_source(dataset, data_dir, max_resolution=max_resolution)
  errors, squares = [], []
  pairs = zip(original.read("train").take(limit), bounded.read("train").take(limit))
  for index, (a, b) in enumerate(pairs):
    full = tf.io.decode_jpeg(a["image"], channels=3)
    small = tf.io.decode_jpeg(b["image"], channels=3)
    for w in range(num_windows):
      begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          tf.shape(full), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[index, w],
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      box = tf.cast(tf.concat([begin[:2], begin[:2] + size[:2]], 0), tf.float32)
      box = box / tf.cast(tf.tile(tf.shape(full)[:2], [2]), tf.float32)
      crops = [tf.image.crop_and_resize(tf.cast(image[None], tf.float32), box[None], [0],
                                        (image_size, image_size))[0] for image in (full, small)]
      difference = crops[0] - crops[1]
      errors.append(float(tf.reduce_mean(tf.abs(difference))))
      squares.append(float(tf.reduce_mean(tf.square(difference))))
  return {"mean_abs": float(np.mean(errors)),
          "psnr_db": float(10 * np.log10(255.0 ** 2 / np.mean(squares)))}


def decoder_options(encoded: list[bytes], seconds: float) -> list[tuple[str, float, float]]:
  """(option, ms per image on one core, mean abs error vs INTEGER_ACCURATE) of JPEG decoding."""
  import tensorflow as tf
  exact = [tf.io.decode_jpeg(e, channels=3, dct_method="INTEGER_ACCURATE") for e in encoded[:50]]
  options = {"dct_method INTEGER_ACCURATE": {"dct_method": "INTEGER_ACCURATE"},
             "dct_method '' (TF's default, INTEGER_FAST)": {},
             "ratio=2 (1/2-scale IDCT)": {"ratio": 2},
             "ratio=4": {"ratio": 4}}
  rows = []
  for name, kwargs in options.items():
    ds = tf.data.Dataset.from_tensor_slices(encoded).repeat().map(
        lambda e, kw=kwargs: _one_pixel(tf.io.decode_jpeg(e, channels=3, **kw)))
    milliseconds = 1000.0 / _one_thread_rate(ds, seconds)
    errors = []
    for reference, e in zip(exact, encoded[:50]):
      decoded = tf.io.decode_jpeg(e, channels=3, **kwargs)
      if kwargs.get("ratio"):  # compare with the exact image scaled the same way
        reference = tf.image.resize(reference, tf.shape(decoded)[:2], method="area")
      errors.append(float(tf.reduce_mean(tf.abs(tf.cast(decoded, tf.float32)
                                                - tf.cast(reference, tf.float32)))))
    rows.append((name, milliseconds, float(np.mean(errors))))
  return rows


def device_resize_cost(image_size: int = 224, batch_size: int = 64, repeats: int = 10) -> float:
  """ms per image of the train step's share of boundary "canvas" (`resize_crops`), jitted, on
  JAX's default backend, for crops of 50-100% of the input side."""
  import jax
  import jax.numpy as jnp
  from cnnjax.preprocessing.device import resize_crops
  rng = np.random.default_rng(0)
  canvases = jnp.asarray(rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8))
  sides = rng.integers(image_size // 2, image_size + 1, (batch_size, 2))
  crops = jnp.asarray(np.concatenate([sides, rng.integers(0, 2, (batch_size, 1))], 1), jnp.int32)
  resize = jax.jit(lambda c, k: resize_crops(c, k, image_size).sum())
  resize(canvases, crops).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    resize(canvases, crops).block_until_ready()
  return 1000.0 * (time.perf_counter() - start) / repeats / batch_size


def compare_presets(args) -> None:
  try:
    from benchmarks.photos import make_photo_folder
  except ImportError:  # run as a script: benchmarks/ is on the path, the repository is not
    from photos import make_photo_folder
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as workdir:
    folder = os.path.join(workdir, "photos")
    made = make_photo_folder(folder, args.num_images, args.width, args.height)
    data_dir = os.path.join(workdir, "data")
    dataset = f"image_folder:{folder}"
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} cores, "
          f"python {platform.python_version()}")
    print(f"images: {made['images']} JPEGs {args.width}x{args.height} q90 cut from "
          f"{', '.join(made['sources'])}; mean {made['mean_kib']:.0f} KiB")
    print(f"images/s on {cores} cores, uint8 out, batch 64, medians of {args.rounds} "
          f"alternating rounds ({args.seconds:.0f} s per pipeline):")
    for preset in PRESET_CASES:
      rates = preset_rates(dataset, data_dir, preset, args.seconds, args.rounds)
      plain = rates["plain tf.data"]
      for name, rate in rates.items():
        print(f"  {preset:12s} {name:56s} {rate:8.1f}  ({rate / cores:7.1f} per core, "
              f"{rate / plain:.2f}x plain)", flush=True)
    print("pixel error of a bounded copy (Inception windows, 224x224 bilinear, vs the original):")
    for bound in INCEPTION_BOUNDS:
      error = bounded_pixel_error(dataset, data_dir, bound)
      print(f"  max_resolution={bound}: mean abs {error['mean_abs']:.2f} / 255, "
            f"PSNR {error['psnr_db']:.1f} dB")
    import jax
    print(f"boundary 'canvas': the step's resize costs {device_resize_cost():.3f} ms per image "
          f"on JAX's {jax.default_backend()} backend (batch 64, jitted)")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs)
    encoded = [open(p, "rb").read() for p in paths]
    print("JPEG decoding options, one core (error: mean abs vs INTEGER_ACCURATE, 0..255):")
    for name, milliseconds, error in decoder_options(encoded, max(2.0, args.seconds / 4)):
      print(f"  {name:44s} {milliseconds:6.3f} ms  error {error:.2f}")


if __name__ == "__main__":
  main()
