"""Every augmentation preset, declared once: an ordered list of ops, each with its options.

A preset is data. Its ops run in the order listed; an op's options (with
their defaults, some relative to the network input side S) are defined once,
in OPTIONS; a preset takes exactly the options of its ops. Each op says from
which boundary (`cnnjax.preprocessing.boundary`) on it runs on the device,
inside the jitted step (`cnnjax.preprocessing.device`):

  device_from=None      always the host's (tf.data on the CPU, or DALI)
  device_from="uint8"   the device's at boundaries uint8, canvas and dali:
                        the colour distortions and the normalisation
  device_from="canvas"  the device's at boundary canvas only: the Inception
                        crop's resize and flip

The back ends are built from these declarations: `cnnjax.data.augment`
(tf.data) maps each op name to its TensorFlow op, `cnnjax.dali.plans` to its
numpy draw of the crop plan, `cnnjax.preprocessing.device` to its JAX op;
their option tables are generated from here, every back end checks options
with `check_options` (each option's declared check), and tests/data/test_presets.py
walks the declarations and checks that every back end implements each op it
claims, with these defaults. A new preset is one PRESETS entry (and new ops
only when it needs them).

The evaluation views are declared the same way (VIEWS: each view's options
and defaults), built by `cnnjax.data.views`.

Needs nothing but Python.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cnnjax.errors import close_matches

UINT8, CANVAS = "uint8", "canvas"
# The boundaries at which an op with `device_from` runs on the device.
_DEVICE_AT = {UINT8: ("uint8", "canvas", "dali"), CANVAS: ("canvas",)}

INTERPOLATION_METHODS = ("bilinear", "area", "nearest", "bicubic")


@dataclasses.dataclass(frozen=True)
class Check:
  """An option's check: `ok(value, the preset's resolved options, input side S)`; else the
  value must be `must`, and `fix` says how (both formatted with v, o and s)."""
  ok: Callable[[Any, Mapping[str, Any], int], bool]
  must: str
  fix: str = ""

  def problem(self, v: Any, o: Mapping[str, Any], s: int) -> str | None:
    if self.ok(v, o, s):
      return None
    fix = self.fix.format(v=v, o=o, s=s)
    return self.must.format(v=v, o=o, s=s) + f", got {v!r}" + (f" ({fix})" if fix else "")


@dataclasses.dataclass(frozen=True)
class Option:
  """A preset option: its default (a value, or a function of the input side S), meaning and
  check (`check_options` applies it)."""
  name: str
  default: Any
  doc: str
  check: Check

  def value(self, given: Mapping[str, Any], image_size: int) -> Any:
    """The option as given, else its default for input side `image_size`."""
    if self.name in given:
      return given[self.name]
    return self.default(image_size) if callable(self.default) else self.default


def _int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _pair(low: float, high: float | None = None) -> Check:
  """(min, max) with low < min <= max (<= high)."""
  def ok(v, o, s):
    return (isinstance(v, (tuple, list)) and len(v) == 2 and all(_real(x) for x in v)
            and low < v[0] <= v[1] and (high is None or v[1] <= high))
  return Check(ok, f"(min, max) with {low} < min <= max" + (f" <= {high}" if high else ""))


_BOOL = Check(lambda v, o, s: isinstance(v, bool), "True or False")
_STRENGTH = Check(lambda v, o, s: _real(v) and v >= 0, "a number >= 0")
_FITS_CROP = Check(lambda v, o, s: _int(v) and v >= s, "an integer >= image_size={s}",
                   "{v!r} is smaller than the {s}x{s} crop, which must fit inside the resized "
                   "image")


def _options(*options: Option) -> dict[str, Option]:
  return {o.name: o for o in options}


OPTIONS: dict[str, Option] = _options(
    Option("resize_size", lambda s: int(round(s / 0.875)),
           "the shorter side before the centre square (S / 0.875: 224 -> 256)", _FITS_CROP),
    Option("scale_min", lambda s: int(round(s * 256 / 224)),
           "scale jittering's smallest shorter side (VGG: 256 at S = 224)", _FITS_CROP),
    Option("scale_max", lambda s: int(round(s * 512 / 224)),
           "scale jittering's largest shorter side (VGG: 512 at S = 224)",
           Check(lambda v, o, s: _int(v) and _int(o["scale_min"]) and v >= o["scale_min"],
                 "an integer with scale_min <= scale_max (scale_min={o[scale_min]!r})",
                 "scale jittering draws the shorter side from [scale_min, scale_max]")),
    Option("pad", 4, "zero padding on every side before the random crop (pixels)",
           Check(lambda v, o, s: _int(v) and v >= 0, "an integer >= 0")),
    Option("area_range", (0.08, 1.0), "the crop's fraction of the image area", _pair(0.0, 1.0)),
    Option("aspect_range", (3 / 4, 4 / 3), "the crop's width / height", _pair(0.0)),
    Option("max_attempts", 10, "draws of a crop before the whole image is used",
           Check(lambda v, o, s: _int(v) and v >= 1, "an integer >= 1")),
    Option("interpolations", INTERPOLATION_METHODS, "resize methods, one drawn per example",
           Check(lambda v, o, s: isinstance(v, (tuple, list)) and len(v) > 0 and all(
               m in INTERPOLATION_METHODS for m in v),
                 f"a non-empty sequence of {INTERPOLATION_METHODS}")),
    Option("flip", True, "mirror left-right with probability 1/2", _BOOL),
    Option("photometric", True, "the Inception colour distortions (brightness, contrast, "
           "saturation, hue, in that order)",
           Check(_BOOL.ok, "True or False", "where the distortions run is the boundary's choice: "
                 "boundary='uint8' runs them in the train step")),
    Option("brightness", 32.0, "added brightness, U[-b, b] on the 0..255 scale", _STRENGTH),
    Option("contrast", 0.5, "contrast factor U[1 - c, 1 + c]", _STRENGTH),
    Option("saturation", 0.5, "saturation factor U[1 - s, 1 + s]", _STRENGTH),
    Option("hue", 0.2, "hue shift U[-h, h] of a turn", _STRENGTH),
    Option("pca_color", False, "AlexNet's PCA colour lighting: True (the dataset's own PCA), "
           "'imagenet' (the published constants) or False",
           Check(lambda v, o, s: v is None or isinstance(v, bool) or v == "imagenet",
                 "True, False or 'imagenet'")),
    Option("pca_alpha_std", 0.1, "the PCA lighting's alpha standard deviation", _STRENGTH),
)

PHOTOMETRIC_STRENGTHS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class Op:
  """One step of a preset: what it does, its options, and from which boundary on the
  device runs it (None: never)."""
  name: str
  device_from: str | None
  options: tuple[str, ...] = ()
  doc: str = ""

  def on_device(self, boundary: str) -> bool:
    """Whether the jitted step runs this op at (resolved) `boundary`."""
    return self.device_from is not None and boundary in _DEVICE_AT[self.device_from]


OPS: dict[str, Op] = {op.name: op for op in (
    Op("decode", None, (), "encoded bytes or an array -> uint8 [H, W, 3]"),
    Op("fit_input", None, (), "shorter side -> S, centre S x S crop; nothing for a dataset "
       "whose images are already S x S"),
    Op("center_view", None, ("resize_size",), "shorter side -> resize_size, centre S x S crop "
       "(the evaluation centre view); nothing for a dataset whose images are already S x S"),
    Op("resize_shorter_side", None, ("resize_size",), "shorter side -> resize_size"),
    Op("center_crop", None, ("resize_size",), "the centre resize_size square"),
    Op("random_resize_shorter_side", None, ("scale_min", "scale_max"),
       "shorter side -> U{scale_min..scale_max}"),
    Op("pad", None, ("pad",), "zero padding (the mean colour after normalisation)"),
    Op("random_crop", None, (), "a uniformly placed S x S crop"),
    Op("inception_crop", None, ("area_range", "aspect_range", "max_attempts"),
       "decode a random window (TF's sample_distorted_bounding_box draw)"),
    Op("random_resize", CANVAS, ("interpolations",),
       "the window -> S x S with a drawn interpolation (on the device: bilinear)"),
    Op("flip", CANVAS, ("flip",), "mirror left-right with probability 1/2"),
    Op("photometric", UINT8, ("photometric", *PHOTOMETRIC_STRENGTHS),
       "brightness, contrast, saturation, hue"),
    Op("pca_lighting", UINT8, ("pca_color", "pca_alpha_std"), "AlexNet's colour lighting"),
    Op("normalize", UINT8, (), "(x - mean) / std with the run's normalisation"),
)}


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named, ordered list of ops (see the module docstring)."""
  name: str
  ops: tuple[str, ...]
  doc: str

  @property
  def options(self) -> tuple[str, ...]:
    """The options this preset takes: those of its ops, in declaration order."""
    return tuple(dict.fromkeys(o for op in self.ops for o in OPS[op].options))


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("none", ("decode", "center_view", "normalize"),
           "no augmentation: the evaluation centre crop"),
    Preset("cifar", ("decode", "fit_input", "normalize", "pad", "random_crop", "flip"),
           "ResNet Sec. 4.2: pad 4, random 32 x 32 crop, flip; normalised before the padding"),
    Preset("alexnet", ("decode", "resize_shorter_side", "center_crop", "pca_lighting",
                       "normalize", "random_crop", "flip"),
           "AlexNet Sec. 4.1: the centre 256 square, random 224 crops and mirrors, PCA lighting"),
    Preset("scale_jitter", ("decode", "random_resize_shorter_side", "random_crop", "flip",
                            "pca_lighting", "normalize"),
           "VGG Sec. 3.1: shorter side U{256..512}, random 224 crop, flip"),
    Preset("inception", ("inception_crop", "random_resize", "flip", "photometric",
                         "pca_lighting", "normalize"),
           "GoogLeNet Sec. 6 as in TF's Inception preprocessing: 8-100% area crops of aspect "
           "3/4..4/3, random interpolation, flip, photometric distortions"),
)}


@dataclasses.dataclass(frozen=True)
class View:
  """An evaluation view: its options and their defaults (`cnnjax.data.views` builds it).

  Views are deterministic and host-side; at boundary "uint8" their images
  cross unnormalised with windows and the device normalises them.
  """
  name: str
  defaults: Mapping[str, Any]
  doc: str

  @property
  def options(self) -> tuple[str, ...]:
    return tuple(self.defaults)


VGG_SCALES = (256, 384, 512)  # VGG Sec. 3.2 / Table 5
GOOGLENET_SCALES = (256, 288, 320, 352)  # GoogLeNet Sec. 7
VIEWS: dict[str, View] = {v.name: v for v in (
    View("center", {"crop_fraction": 0.875, "resize_size": None},
         "shorter side -> S / crop_fraction (or resize_size), the centre S crop"),
    View("10crop", {"resize_size": None, "pad": 4, "flip": True},
         "AlexNet/ResNet: four corners and the centre of the resize_size square, and mirrors"),
    View("dense_multiscale", {"scales": VGG_SCALES, "flip": True},
         "VGG/ResNet dense evaluation: the whole image per scale Q (shorter side Q) and its mirror"),
    View("144crop", {"scales": GOOGLENET_SCALES, "pad": 4, "flip": True},
         "GoogLeNet: 4 scales x 3 squares x 6 crops x 2 mirrors"),
    View("150crop", {"scales": VGG_SCALES, "grid": 5},
         "VGG multi-crop: a 5 x 5 grid of crops per scale and their mirrors"),
)}


def resolve(name: str, given: Mapping[str, Any], image_size: int) -> dict[str, Any]:
  """Every option of preset `name`: those given, the others at their defaults for `image_size`
  (unchecked: `check_options` checks)."""
  return {o: OPTIONS[o].value(given, image_size) for o in PRESETS[name].options}


def check_options(name: str, given: Mapping[str, Any], image_size: int, *,
                  error: type[Exception], choices: Sequence[str] | None = None,
                  where: str = "") -> dict[str, Any]:
  """`resolve`, after refusing (with `error`, one message whichever back end asks) an unknown
  preset (of `choices`, default all; `where` says which back end), an option the preset does
  not take, or a value its option's check refuses. image_size 0: the checks against the input
  side pass (a caller that has no input side)."""
  choices = tuple(PRESETS) if choices is None else tuple(choices)
  if name not in choices:
    raise error(f"unknown augmentation preset {name!r}{where}: {close_matches(name, choices)}")
  unknown = unknown_options(name, given)
  if unknown:
    raise error(f"augmentation preset {name!r} does not take {unknown}; "
                f"it takes {sorted(PRESETS[name].options)}")
  options = resolve(name, given, image_size)
  for option, value in options.items():
    problem = OPTIONS[option].check.problem(value, options, image_size)
    if problem is not None:
      raise error(f"augmentation preset {name!r}: {option} must be {problem}")
  return options


def unknown_options(name: str, given: Mapping[str, Any]) -> list[str]:
  return sorted(set(given) - set(PRESETS[name].options))


def supported(implemented: Callable[[str], bool]) -> tuple[str, ...]:
  """The presets all of whose ops a back end implements (`implemented(op name)`)."""
  return tuple(name for name, p in PRESETS.items() if all(implemented(op) for op in p.ops))
