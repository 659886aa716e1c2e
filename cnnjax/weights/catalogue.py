"""Every published weights source: its network, pixel convention, view and classes.

The names come from the model registry (`cnnjax.models.registry.PUBLISHED_WEIGHTS`);
this module adds what each origin's weights were trained with. Pure data:
loading lives in `cnnjax.weights`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cnnjax.errors import ModelError, close_matches
from cnnjax.preprocessing.imagenet import CAFFE_MEAN_RGB, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

ORIGINS = ("torchvision", "keras")
# torchvision: RGB scaled to [0, 1], minus (0.485, 0.456, 0.406), divided by
# (0.229, 0.224, 0.225); here on the 0..255 scale.
TORCHVISION_MEAN = IMAGENET_MEAN_RGB
TORCHVISION_STD = IMAGENET_STD_RGB
# Keras "caffe" mode: BGR, minus Caffe's ImageNet mean, no scaling. The import turns
# the first convolution to RGB input, so the mean is subtracted in RGB order
# (cnnjax.interop.keras).
# torchvision's weights whose evaluation resize differs from 256 (weights.transforms()).
TORCHVISION_RESIZE = {"resnet50.IMAGENET1K_V2": 232, "resnet101.IMAGENET1K_V2": 232,
                      "resnet152.IMAGENET1K_V2": 232}

# Which published numbers each set of weights is (docs/weights.md says more).
PUBLISHED_ROWS = {
    "keras/vgg16": "VGG net D (16 layers): Simonyan & Zisserman, Tables 3-5, rows D",
    "keras/vgg19": "VGG net E (19 layers): Simonyan & Zisserman, Tables 3-5, rows E",
    "keras/resnet50": "ResNet-50 (v1): He et al. 2016, Table 3 row ResNet-50",
    "keras/resnet101": "ResNet-101 (v1): He et al. 2016, Table 3 row ResNet-101",
    "keras/resnet152": "ResNet-152 (v1): He et al. 2016, Table 3 row ResNet-152",
}


@dataclasses.dataclass(frozen=True)
class Convention:
  """How RGB pixels on the 0..255 scale become network input: (x - mean) / std.

  `source_order` is the channel order the weights were trained on; a BGR
  network's first convolution is reordered at import, so the cnnjax network
  always takes RGB.
  """

  mean: tuple[float, float, float]
  std: tuple[float, float, float] | None = None
  source_order: str = "RGB"
  description: str = ""
  pipeline_normalize: str = "none"  # the same normalisation by its cnnjax.data name


TORCHVISION_CONVENTION = Convention(
    TORCHVISION_MEAN, TORCHVISION_STD, "RGB",
    "torchvision: RGB / 255, minus mean (0.485, 0.456, 0.406), divided by std "
    "(0.229, 0.224, 0.225)", "imagenet")
CAFFE_CONVENTION = Convention(
    CAFFE_MEAN_RGB, None, "BGR",
    "Keras 'caffe' mode: BGR 0..255 minus (103.939, 116.779, 123.68); imported as RGB "
    "minus (123.68, 116.779, 103.939)", "caffe_mean")


@dataclasses.dataclass(frozen=True)
class Source:
  """One published set of weights."""

  name: str  # "torchvision/resnet50.IMAGENET1K_V2", "keras/vgg16"
  origin: str  # "torchvision" | "keras"
  architecture: str  # the origin's network name: "resnet50", "vgg16"
  variant: str | None  # torchvision's weights enum member; None for Keras
  model: str  # the cnnjax registry name
  convention: Convention
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  image_size: int = 224
  resize_size: int = 256  # the centre view: shorter side -> resize_size, centre crop
  classes: str = "imagenet"
  published: str = ""
  # How the weights were trained, as far as evaluation needs it (dense scales
  # follow the training scales): settings of config.input (augment, augment_kwargs).
  training: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def eval_config(self, dataset: str) -> dict[str, Any]:
    """A stand-in for a training's settings, for `cnnjax.evaluate`: the model, and the
    data settings and training scales these weights imply (config.input)."""
    return {"model": {"name": self.model, "kwargs": dict(self.model_kwargs)},
            "input": {"dataset": dataset, "normalize": self.convention.pipeline_normalize,
                      "image_size": self.image_size, "augment": "none", "augment_kwargs": {},
                      **dict(self.training)}}

  @property
  def crop_fraction(self) -> float:
    return self.image_size / self.resize_size


def _make(name: str, model: str) -> Source:
  origin, rest = name.split("/", 1)
  architecture, _, variant = rest.partition(".")
  if origin == "keras":
    kwargs = ({"version": "1", "bn_epsilon": 1.001e-5} if architecture.startswith("resnet")
              else {})
    # The released VGG D/E were trained with scale jittering S in [256, 512]
    # (their multi-scale dense test: Q = 256, 384, 512).
    training = ({"augment": "scale_jitter",
                 "augment_kwargs": {"scale_min": 256, "scale_max": 512}}
                if architecture.startswith("vgg") else {})
    return Source(name, origin, architecture, None, model, CAFFE_CONVENTION, kwargs,
                  published=PUBLISHED_ROWS.get(name, ""), training=training)
  return Source(name, origin, architecture, variant, model, TORCHVISION_CONVENTION,
                resize_size=TORCHVISION_RESIZE.get(rest, 256),
                published=f"torchvision's {architecture} {variant} (its own training recipe)")


def sources() -> dict[str, Source]:
  """Every published weights source by name."""
  from cnnjax.models.registry import PUBLISHED_WEIGHTS  # pylint: disable=import-outside-toplevel
  return {name: _make(name, model) for model, names in PUBLISHED_WEIGHTS.items()
          for name in names}


def get_source(name: str) -> Source:
  """The source called `name`; "torchvision/<arch>" alone is torchvision's newest weights."""
  every = sources()
  if name in every:
    return every[name]
  if name.startswith("torchvision/") and "." not in name:
    variants = [source for key, source in every.items() if key.startswith(name + ".")]
    if variants:
      return variants[-1]
  origin = name.split("/", 1)[0]
  hint = "" if origin in ORIGINS else f" (origins: {', '.join(ORIGINS)})"
  raise ModelError(f"unknown weights {name!r}{hint}; {close_matches(name, every)}")
