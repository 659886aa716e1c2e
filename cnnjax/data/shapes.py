"""`shapes`: a procedurally generated image-classification dataset, offline and of any size.

Ten classes of flat shapes (disc, ring, square, square frame, triangle,
plus, star, crescent, half-disc, L), each drawn at a random position, scale
(circumradius 20-44% of the image side, a factor 2.2), rotation (up to 30
degrees either way) and colour, 30% of them with a striped texture, on a
cluttered background: a two-colour gradient (a random colour and one within
80 levels of it), four thin random strokes in random colours and pixel
noise. The object is darker than a light background and lighter than a dark
one (its colour at least 60 levels from the gradient's mid colour, in every
channel that leaves that room). Everything is drawn with vectorised numpy at
twice the resolution and averaged 2x2 (anti-aliased edges).

The dataset is a function of its options: the same (split, seed, size)
gives the same pixels on every machine, and the first n examples of a
larger set are the n examples of a smaller one (examples are drawn in
blocks of `BLOCK` from per-block seeds). Classes are balanced exactly
within each block of 1,000.

As a dataset name (`config.input.dataset`, `cnnjax.data.dataset_info`):
"shapes" is 10,000 training and 2,000 test images of 32x32; options follow a
colon, e.g. "shapes:train=1000,test=2000,size=32,seed=0" (the small-training-set
mode in which networks overfit). The name is prepared once into the data_dir
as a tfds dataset, like "digits". In numpy: `generate(n, split="train")`.
docs/lessons.md gives the dataset's statistics and what networks score on it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np

from cnnjax.errors import DataError

NAME = "shapes"
CLASS_NAMES = ("disc", "ring", "square", "square_frame", "triangle", "plus", "star",
               "crescent", "half_disc", "corner")
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ("train", "test")
BLOCK = 1000  # examples per seeded block; a multiple of NUM_CLASSES (exact balance)
SCALE_RANGE = (0.2, 0.44)  # circumradius / image side
MAX_ROTATION = 30  # degrees either way
NUM_STROKES = 4
GRADIENT = 80  # the gradient's second colour is within this many levels of the first
NOISE_STD = 6.0
MIN_CONTRAST = 60  # brightness, object vs the background gradient's mid colour
SUPERSAMPLE = 2
STRIPED_FRACTION = 0.3  # objects drawn with a striped texture
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256


class Examples(NamedTuple):
  """Images uint8 [N, S, S, 3], labels int64 [N], and each object's circumradius / S."""
  images: np.ndarray
  labels: np.ndarray
  scales: np.ndarray


@dataclasses.dataclass(frozen=True)
class ShapesOptions:
  """The options of a "shapes:..." name (see the module docstring)."""
  train: int = 10_000
  test: int = 2_000
  size: int = 32
  seed: int = 0

  @property
  def config_name(self) -> str:
    return f"train{self.train}_test{self.test}_size{self.size}_seed{self.seed}"


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise DataError(f"shapes: {name}={value!r} must be an integer")
  if value < low or (high is not None and value > high):
    bound = f"between {low} and {high}" if high is not None else f">= {low}"
    raise DataError(f"shapes: {name}={value!r} is out of range; it must be {bound}")
  return int(value)


def parse_name(name: str) -> ShapesOptions:
  """"shapes" or "shapes:train=1000,size=32" -> ShapesOptions (DataError naming the fix)."""
  if name == NAME:
    return ShapesOptions()
  prefix = NAME + ":"
  if not name.startswith(prefix):
    raise DataError(f"{name!r} is not a shapes dataset name; write 'shapes' or "
                    "'shapes:train=1000,test=2000,size=32,seed=0'")
  fields = {f.name for f in dataclasses.fields(ShapesOptions)}
  values = {}
  for item in filter(None, name[len(prefix):].split(",")):
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or key not in fields:
      raise DataError(f"shapes: cannot read {item!r} in {name!r}; options are "
                      f"{', '.join(sorted(fields))}, written key=integer and separated by commas "
                      "(e.g. 'shapes:train=1000,size=32')")
    try:
      values[key] = int(text)
    except ValueError:
      raise DataError(f"shapes: {key}={text!r} in {name!r} must be an integer") from None
  options = ShapesOptions(**values)
  _check_int("train", options.train, 1)
  _check_int("test", options.test, 1)
  _check_int("size", options.size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
  _check_int("seed", options.seed, 0)
  return options


def _shape_mask(index: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether object coordinates (u, v) (circumradius 1) lie inside shape `index`."""
  rho = np.hypot(u, v)
  box = np.maximum(np.abs(u), np.abs(v))
  name = CLASS_NAMES[index]
  if name == "disc":
    return rho < 0.9
  if name == "ring":
    return (rho < 0.95) & (rho > 0.55)
  if name == "square":
    return box < 0.68
  if name == "square_frame":
    return (box < 0.7) & (box > 0.38)
  if name == "triangle":  # regular, circumradius 1
    sector = 2 * np.pi / 3
    return rho * np.cos(np.mod(np.arctan2(v, u), sector) - sector / 2) < np.cos(np.pi / 3)
  if name == "plus":
    return ((np.abs(u) < 0.28) & (np.abs(v) < 0.9)) | ((np.abs(v) < 0.28) & (np.abs(u) < 0.9))
  if name == "star":
    return rho < 0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u))) ** 3
  if name == "crescent":
    return (rho < 0.95) & (np.hypot(u - 0.5, v) > 0.75)
  if name == "half_disc":
    return (rho < 0.95) & (v < 0.15)
  return (box < 0.72) & ~((u > -0.25) & (v > -0.25))  # corner (an L)


def _inside(class_ids: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """[N, H, W]: whether each example's pixels lie inside its class's shape."""
  out = np.zeros(u.shape, bool)
  for index in range(NUM_CLASSES):
    chosen = class_ids == index
    if chosen.any():
      out[chosen] = _shape_mask(index, u[chosen], v[chosen])
  return out


def _segment_distance(px, py, x0, y0, x1, y1) -> np.ndarray:
  dx, dy = x1 - x0, y1 - y0
  t = np.clip(((px - x0) * dx + (py - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0, 1)
  return np.hypot(px - x0 - t * dx, py - y0 - t * dy)


def _render_block(rng: np.random.Generator, count: int, size: int) -> Examples:
  labels = rng.permutation(np.arange(count) % NUM_CLASSES)
  fine = size * SUPERSAMPLE
  # Pixel-centre coordinates in units of the output image's pixels.
  axis = (np.arange(fine, dtype=np.float32) + 0.5) / SUPERSAMPLE
  py, px = axis[None, :, None], axis[None, None, :]
  col = lambda a: a.astype(np.float32)[:, None, None]  # noqa: E731 - per-example broadcast

  # Background: a linear gradient between two colours in a random direction.
  colour_a = rng.uniform(0, 255, (count, 3))
  colour_b = np.clip(colour_a + rng.uniform(-GRADIENT, GRADIENT, (count, 3)), 0, 255)
  angle = rng.uniform(0, 2 * np.pi, count)
  ramp = ((px - size / 2) * col(np.cos(angle)) + (py - size / 2) * col(np.sin(angle))) / size + 0.5
  ramp = np.clip(ramp, 0, 1)[..., None]
  canvas = (colour_a[:, None, None, :] * (1 - ramp)
            + colour_b[:, None, None, :] * ramp).astype(np.float32)

  # Clutter: strokes of random length, width and colour.
  for _ in range(NUM_STROKES):
    x0, y0 = rng.uniform(0, size, (2, count))
    length = rng.uniform(0.15, 0.5, count) * size
    direction = rng.uniform(0, 2 * np.pi, count)
    width = rng.uniform(0.35, 0.7, count)
    colour = rng.uniform(0, 255, (count, 3)).astype(np.float32)
    distance = _segment_distance(px, py, col(x0), col(y0), col(x0 + length * np.cos(direction)),
                                 col(y0 + length * np.sin(direction)))
    stroke = (distance < col(width))[..., None]
    canvas = np.where(stroke, colour[:, None, None, :], canvas)

  # The object: position, scale, rotation; colour away from the background under it.
  scales = rng.uniform(*SCALE_RANGE, count)
  radius = scales * size
  cx = rng.uniform(radius, size - radius)
  cy = rng.uniform(radius, size - radius)
  rotation = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION, count))
  # Darker than a light background, lighter than a dark one: at least MIN_CONTRAST levels
  # of brightness from the gradient's mid colour, in every channel.
  under = (colour_a + colour_b) / 2
  light = under.mean(axis=1, keepdims=True) > 127.5
  darker = under * rng.uniform(0, 1 - MIN_CONTRAST / 255, (count, 1))
  lighter = under + (255 - under) * rng.uniform(MIN_CONTRAST / 255, 1, (count, 1))
  colour = np.where(light, np.minimum(darker, under - MIN_CONTRAST * (under >= MIN_CONTRAST)),
                    np.maximum(lighter, under + MIN_CONTRAST * (under <= 255 - MIN_CONTRAST)))
  colour = np.clip(colour, 0, 255).astype(np.float32)
  dx, dy = px - col(cx), py - col(cy)
  cos, sin = col(np.cos(rotation)), col(np.sin(rotation))
  u = (dx * cos + dy * sin) / col(radius)
  v = (-dx * sin + dy * cos) / col(radius)
  inside = _inside(labels, u, v)
  striped = rng.random(count) < STRIPED_FRACTION
  period = rng.uniform(0.35, 0.7, count)  # in circumradii
  stripes = np.sin(2 * np.pi * u / col(period)) > 0
  shade = np.where(striped[:, None, None] & stripes, np.float32(0.7), np.float32(1.0))[..., None]
  canvas = np.where(inside[..., None], colour[:, None, None, :] * shade, canvas)

  # Anti-alias (2x2 mean), then noise.
  canvas = canvas.reshape(count, size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(2, 4))
  canvas += rng.normal(0, NOISE_STD, canvas.shape).astype(np.float32)
  images = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
  return Examples(images, labels.astype(np.int64), scales.astype(np.float32))


def generate(num_examples: int, *, split: str = "train", image_size: int = 32,
             seed: int = 0) -> Examples:
  """`num_examples` images of `split` ("train" or "test"; disjoint random streams)."""
  num_examples = _check_int("num_examples", num_examples, 0)
  image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
  seed = _check_int("seed", seed, 0)
  if split not in SPLITS:
    raise DataError(f"shapes: split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
  blocks = []
  for block in range(-(-num_examples // BLOCK)):
    rng = np.random.default_rng([seed, SPLITS.index(split), block])
    count = min(BLOCK, num_examples - block * BLOCK)
    full = _render_block(rng, BLOCK, image_size)
    blocks.append(Examples(*(array[:count] for array in full)))
  if not blocks:
    return Examples(np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0,), np.int64),
                    np.zeros((0,), np.float32))
  return Examples(*(np.concatenate(parts) for parts in zip(*blocks)))


def shapes_builder(name: str, data_dir: str):
  """The tfds builder of a "shapes..." name (prepared like "digits": once per data_dir)."""
  options = parse_name(name)
  builder_class, config_class = _builder_classes()
  config = config_class(name=options.config_name, options=options)
  return builder_class(config=config, data_dir=data_dir)


@functools.cache
def _builder_classes():
  """The tfds builder class, made on first use (tfds stays off the numpy path)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  @dataclasses.dataclass(eq=False)
  class ShapesConfig(tfds.core.BuilderConfig):
    options: ShapesOptions = ShapesOptions()

  class CnnjaxShapes(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated shapes on clutter (cnnjax.data.shapes)."""

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.3.0": "Ten shape classes on a cluttered background."}

    def _info(self) -> tfds.core.DatasetInfo:
      side = self.builder_config.options.size
      return tfds.core.DatasetInfo(
          builder=self, description=__doc__,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(side, side, 3), encoding_format="png"),
              "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
          }),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      del dl_manager  # generated, nothing to download
      options = self.builder_config.options
      return {"train": self._generate_examples("train", options.train),
              "test": self._generate_examples("test", options.test)}

    def _generate_examples(self, split, count):
      options = self.builder_config.options
      examples = generate(count, split=split, image_size=options.size, seed=options.seed)
      for index, (image, label) in enumerate(zip(examples.images, examples.labels)):
        yield index, {"image": image, "label": int(label)}

  return CnnjaxShapes, ShapesConfig
