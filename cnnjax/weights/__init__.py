"""Published weights in, a cnnjax network with its conventions out.

    from cnnjax import weights
    w = weights.load("torchvision/resnet50.IMAGENET1K_V2")     # torchvision's download/cache
    w = weights.load("keras/vgg16", path="vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    x = w.transform("cat.jpg")                 # the evaluation view, normalised: [224, 224, 3]
    probs = w.predict(["cat.jpg"])             # [1, 1000]
    w.model.apply(w.variables, x[None], train=False)

A `Weights` carries the network (`model`, `variables`: a flax.linen module
and its variables, as `cnnjax.models.create` and `model.init` give), the
pixel convention the weights were trained with (`normalize`: RGB 0..255 ->
network input), the evaluation view (`view`: the crops the evaluation
pipeline cuts, from the same code, `cnnjax.data.views`), and the class
names. Sources (`list_weights()`):

* "torchvision/<model>.<ENUM>" (e.g. "torchvision/resnet50.IMAGENET1K_V2";
  "torchvision/resnet50" is torchvision's newest): fetched through
  torchvision's own download and cache, or read from `path=` (.pth, or
  .safetensors, which needs only safetensors and numpy).
* "keras/vgg16", "keras/vgg19", "keras/resnet50|101|152": the VGG and ResNet
  authors' own Caffe weights as keras.applications ships them, read from
  `path=` (.h5 as keras.applications downloads it, .weights.h5, .keras; h5py
  alone) or fetched through keras.applications.

Optional dependencies: `pip install 'cnnjax[weights]'` (safetensors, h5py)
reads files; `cnnjax[torch]` fetches torchvision's weights by name.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ModelError
from cnnjax.preprocessing.presets import VIEWS
from cnnjax.weights.catalogue import Convention, Source, get_source, sources

def list_weights(model: str | None = None) -> list[str]:
  """Names of every published weights source (of one registered model, if given)."""
  if model is not None:
    from cnnjax.models.registry import weights_of  # pylint: disable=import-outside-toplevel
    return list(weights_of(model))
  return list(sources())


@dataclasses.dataclass(frozen=True)
class Weights:
  """A network with published weights and the conventions they were trained with."""

  source: Source
  model: nn.Module
  variables: Any
  class_names: tuple[str, ...]

  @property
  def name(self) -> str:
    return self.source.name

  @property
  def convention(self) -> Convention:
    return self.source.convention

  @property
  def image_size(self) -> int:
    return self.source.image_size

  def normalize(self, images: Any) -> jnp.ndarray:
    """RGB pixels on the 0..255 scale, at the network's size -> network input (float32)."""
    images = jnp.asarray(images, jnp.float32)
    if images.shape[-1] != 3:
      raise ModelError(f"{self.name}: normalize takes RGB images [..., H, W, 3]; got "
                       f"{tuple(images.shape)}")
    centred = images - jnp.asarray(self.convention.mean, jnp.float32)
    if self.convention.std is None:
      return centred
    return centred / jnp.asarray(self.convention.std, jnp.float32)

  def view(self, image: Any, view: str = "center", **view_kwargs: Any):
    """The evaluation view's pixels of one image (RGB 0..255, float32, not normalised).

    `image`: a file path, encoded bytes, or an [H, W, 3] (or [H, W, 1]) array.
    The crops are cut by the evaluation pipeline's own view code
    (`cnnjax.data.views.eval_op`), so they equal what `cnnjax.data.eval_iterator`
    yields for the same image with `normalize="none"`. "center": [S, S, 3],
    shorter side -> resize_size (the weights' own: 256, or 232 for
    torchvision's V2 ResNets), centre crop; "10crop", "144crop", "150crop":
    [V, S, S, 3]; "dense_multiscale": {"image_q<Q>": [2, Hq, Wq, 3]} (the whole
    image at each scale, and its mirror; `scales=` as in cnnjax.evaluate).
    """
    if view in ("center", "10crop") and not {"resize_size", "crop_fraction"} & set(view_kwargs):
      view_kwargs["resize_size"] = self.source.resize_size
    return image_view(image, view, image_size=self.image_size, **view_kwargs)

  def transform(self, image: Any, view: str = "center", **view_kwargs: Any):
    """`view`, then `normalize`: one image -> network input ([S, S, 3], or [V, S, S, 3])."""
    pixels = self.view(image, view, **view_kwargs)
    if isinstance(pixels, dict):
      return {key: self.normalize(value) for key, value in pixels.items()}
    return self.normalize(pixels)

  def predict(self, images: Any, view: str = "center", *, batch_size: int = 32,
              **view_kwargs: Any) -> np.ndarray:
    """Class probabilities [N, classes] of images (paths, bytes or arrays of any size),
    each through `transform`, the softmax averaged over the view's crops."""
    from cnnjax import classify  # pylint: disable=import-outside-toplevel
    if isinstance(images, (str, bytes, os.PathLike)) or (
        isinstance(images, np.ndarray) and images.ndim == 3):
      images = [images]
    inputs = [self.transform(image, view, **view_kwargs) for image in images]
    return classify.predict(self.model_for_view(view), self.variables, inputs, view=view,
                            batch_size=batch_size)

  def model_for_view(self, view: str) -> nn.Module:
    """The network as `view` runs it (dense views: fully convolutional, same variables)."""
    if not view.startswith("dense"):  # dense_multiscale, dense+150crop
      return self.model
    from cnnjax import models  # pylint: disable=import-outside-toplevel
    return models.dense_form(self.model, self.source.model)

  def to_nnx(self, rngs: Any = None):
    """The network with these weights as a flax.nnx module (`to_nnx`)."""
    return to_nnx(self.model, self.variables, rngs=rngs)

  def top_k(self, probabilities: Any, k: int = 5) -> list[list[tuple[str, float]]]:
    """[(class name, probability), ...] of the k most probable classes, per row."""
    from cnnjax import classify  # pylint: disable=import-outside-toplevel
    return classify.top_k(probabilities, self.class_names, k)


def to_nnx(model: nn.Module, variables: Any, *, rngs: Any = None):
  """A linen model and its variables as a flax.nnx module, through `flax.nnx.bridge.ToNNX`.

      module = cnnjax.weights.to_nnx(w.model, w.variables)   # or w.to_nnx()
      logits = module(images, train=False)                   # = w.model.apply(w.variables, ...)

  The module is built lazily on a small image (as ToNNX needs a sample input)
  and then takes the given variables: params as nnx.Param, batch statistics
  as nnx.BatchStat, so an NNX project trains, splits and checkpoints it as
  any of its own modules. `rngs`: an nnx.Rngs for dropout (default seed 0).
  """
  from flax import nnx  # pylint: disable=import-outside-toplevel
  side = max(32, int(getattr(model, "min_image_size", 32)))
  sample = jnp.zeros((1, side, side, int(getattr(model, "in_channels", 3))), jnp.float32)
  module = nnx.bridge.ToNNX(model, rngs=rngs if rngs is not None else nnx.Rngs(0))
  module.lazy_init(sample, train=False)
  flat = []
  for path, variable in nnx.to_flat_state(nnx.state(module)):
    if not isinstance(variable, (nnx.Param, nnx.BatchStat)):  # the bridge's own rng state
      continue
    collection = "batch_stats" if isinstance(variable, nnx.BatchStat) else "params"
    value = variables[collection]
    for key in path:
      value = value[key]
    if tuple(value.shape) != tuple(variable.shape):
      raise ModelError(f"variable {collection}/{'/'.join(map(str, path))} has shape "
                       f"{tuple(value.shape)}; the model needs {tuple(variable.shape)}")
    flat.append((path, variable.replace(jnp.asarray(value))))
  nnx.update(module, nnx.from_flat_state(flat))
  return module


def image_view(image: Any, view: str = "center", *, image_size: int = 224, **view_kwargs: Any):
  """The evaluation view of one image, as the evaluation pipeline cuts it (not normalised).

  See `Weights.view`; this is the same for any network input size.
  """
  if view not in VIEWS:
    raise ModelError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
  try:
    # cnnjax.data first: it imports TensorFlow quietly and keeps it off the GPUs
    from cnnjax.data import normalization, views  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ModelError("the evaluation views need TensorFlow (cnnjax's input pipeline): "
                     "pip install tensorflow-cpu") from error
  op = views.eval_op(view, image_size=image_size, native_size=None,
                     normalize_op=normalization.normalize_op("none", None), **view_kwargs)
  out = op({"image": _image_tensor(tf, image)})
  if view == "dense_multiscale":  # the whole image at each scale: one key per scale
    return {key: np.asarray(value) for key, value in out.items() if key.startswith("image_q")}
  return np.asarray(tf.cast(out["image"], tf.float32))


def _image_tensor(tf, image: Any):
  """A path, encoded bytes or an array -> what the views decode (a tf tensor)."""
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.exists(path):
      raise ModelError(f"image file {path!r} does not exist")
    with open(path, "rb") as f:
      return tf.constant(f.read())
  if isinstance(image, bytes):
    return tf.constant(image)
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ModelError(f"an image is [H, W, 3] (or 1 or 4 channels); got shape {array.shape}")
  return tf.constant(array)


def load(source: str, *, path: str | os.PathLike | None = None, dtype: Any = jnp.float32,
         param_dtype: Any = jnp.float32, **overrides: Any) -> Weights:
  """The network of a published weights source, its variables and its conventions.

  Args:
    source: one of `list_weights()`, e.g. "torchvision/resnet50.IMAGENET1K_V2",
      "keras/vgg16".
    path: a local file of those weights (torchvision: .pth or .safetensors;
      Keras: .h5, .weights.h5 or .keras). None fetches them through the
      origin's own download and cache (torchvision, keras.applications).
    dtype, param_dtype, **overrides: as `cnnjax.models.create` (e.g.
      `fully_convolutional=True`, `scan_blocks=True`).
  """
  spec = get_source(source)
  names: tuple[str, ...] | None = None
  if spec.origin == "torchvision":
    from cnnjax.interop import torchvision as tv  # pylint: disable=import-outside-toplevel
    if path is None:
      state, enum = tv.fetch_state_dict(spec.architecture, spec.variant or "DEFAULT")
      names = tuple(enum.meta.get("categories") or ()) or None
    else:
      state = path
    model, variables = tv.load(spec.architecture, state, dtype=dtype, param_dtype=param_dtype,
                               **overrides)
  else:
    from cnnjax.interop import keras as keras_import  # pylint: disable=import-outside-toplevel
    model, variables = keras_import.load(spec.architecture, path, dtype=dtype,
                                         param_dtype=param_dtype, **overrides)
  if names is None:
    names = class_names(spec, model.num_classes)
  return Weights(spec, model, variables, names)


def class_names(spec: Source, num_classes: int) -> tuple[str, ...]:
  """The source's class names for a classifier of `num_classes` outputs
  ("class <i>" where the source's names do not fit)."""
  from cnnjax.weights.imagenet_classes import NAMES  # pylint: disable=import-outside-toplevel
  if spec.classes == "imagenet" and num_classes == len(NAMES):
    return NAMES
  return tuple(f"class {i}" for i in range(num_classes))


__all__ = ["Convention", "Source", "Weights", "class_names", "get_source", "image_view",
           "list_weights", "load", "sources", "to_nnx"]
