r"""One image in, classes out.

    python -m cnnjax.classify cat.jpg dog.png --weights torchvision/resnet50.IMAGENET1K_V2
    python -m cnnjax.classify cat.jpg --weights keras/vgg16 --path vgg16.h5 --view 10crop

prints, for each image, the five most probable classes and their
probabilities. From Python:

    from cnnjax import classify, weights
    w = weights.load("keras/resnet50", path="resnet50.h5")
    probs = classify.predict(w.model, w.variables, [w.transform("cat.jpg")])   # [1, 1000]
    classify.top_k(probs, w.class_names, k=5)

`predict` takes network input (already viewed and normalised: `Weights.transform`,
or any array the model takes) and returns probabilities, the softmax averaged
over a view's crops as `cnnjax.evaluate` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cnnjax.errors import CnnjaxError, ModelError
from cnnjax.scoring import predict_views


def predict(model: nn.Module, variables: Any, inputs: Any, *, view: str | None = None,
            batch_size: int = 32) -> np.ndarray:
  """Class probabilities [N, classes] of network inputs.

  Args:
    inputs: [N, H, W, 3] (one view per image), [N, V, H, W, 3] (V crops per
      image, posteriors averaged), or a sequence of per-image arrays of those
      shapes without N, or of dense views {"image_q<Q>": [2, Hq, Wq, 3]}
      (scored one image at a time; the model must be the fully convolutional one).
    view: the evaluation view the inputs were cut for, checked against their layout.
    batch_size: images per forward pass.
  """
  if batch_size < 1:
    raise ModelError(f"batch_size must be >= 1, got {batch_size}")
  step = jax.jit(lambda v, batch: predict_views(model, v, batch, view))
  if isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], Mapping):
    rows = [step(variables, {key: np.asarray(value)[None] for key, value in item.items()})
            for item in inputs]
    return np.concatenate([np.asarray(row) for row in rows])
  if not isinstance(inputs, (np.ndarray, jax.Array)):
    inputs = np.stack([np.asarray(item) for item in inputs])
  if inputs.ndim not in (4, 5):
    raise ModelError(f"predict takes [N, H, W, 3] or [N, V, H, W, 3] network inputs; got "
                     f"shape {tuple(inputs.shape)}")
  rows = []
  for start in range(0, inputs.shape[0], batch_size):
    chunk = inputs[start:start + batch_size]
    rows.append(np.asarray(step(variables, {"image": chunk})))
  return np.concatenate(rows)


def top_k(probabilities: Any, class_names: Sequence[str], k: int = 5
          ) -> list[list[tuple[str, float]]]:
  """[(class name, probability), ...] of the k most probable classes, for each row."""
  probabilities = np.atleast_2d(np.asarray(probabilities))
  if probabilities.shape[-1] != len(class_names):
    raise ModelError(f"{probabilities.shape[-1]} class scores but {len(class_names)} "
                     "class names")
  k = min(k, probabilities.shape[-1])
  order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
  return [[(class_names[i], float(row[i])) for i in best]
          for row, best in zip(probabilities, order)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnnjax.classify",
                                   description="The most probable classes of images.")
  parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
  parser.add_argument("--weights", required=True,
                      help="a weights source, e.g. torchvision/resnet50.IMAGENET1K_V2 or "
                           "keras/vgg16 (python -c 'import cnnjax.weights as w; "
                           "print(w.list_weights())')")
  parser.add_argument("--path", default=None,
                      help="a local weights file (default: the origin's download and cache)")
  parser.add_argument("--view", default="center",
                      choices=("center", "10crop", "144crop", "150crop", "dense_multiscale"))
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--verbose", action="store_true",
                      help="show the libraries' own log lines (by default only their errors)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from cnnjax import weights  # pylint: disable=import-outside-toplevel
  try:
    loaded = weights.load(args.weights, path=args.path)
    probabilities = loaded.predict(args.images, view=args.view)
  except CnnjaxError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  for image, best in zip(args.images, loaded.top_k(probabilities, args.top)):
    print(image)
    for name, probability in best:
      print(f"  {probability:7.2%}  {name}")
  return 0


if __name__ == "__main__":
  from cnnjax import logs  # pylint: disable=g-import-not-at-top
  logs.set_up(verbose="--verbose" in sys.argv[1:])  # a process setting: here, not at import
  sys.exit(main())
