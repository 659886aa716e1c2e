r"""Image embeddings: a network's last hidden layer for every image of a split.

The lecture's observation about AlexNet: the 4096-d activations feeding the
classifier place similar images close together in Euclidean distance. Every
cnnjax model returns that vector as `feats["pre_logits"]` when called with
`features=True`; this module collects it for a whole split, batch by batch,
sharded over the devices, padding dropped.

    from cnnjax import embed, retrieval
    embeddings, labels = embed.embed_workdir("workdirs/quickstart", split="test")
    distances, neighbours = retrieval.nearest_neighbours(embeddings, embeddings, k=6)

    python -m cnnjax.embed --workdir workdirs/quickstart --split test --output test.npz
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cnnjax import logs
from cnnjax.errors import CnnjaxError, DataError, ModelError

DEFAULT_FEATURE = "pre_logits"


def _make_embed_step(model: nn.Module, feature: str, mesh, device_input=None):
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel

  def step(variables, batch):
    images = batch["image"]
    if device_input is not None:  # uint8 batches: normalise here
      images = device_input.eval(images, batch.get("window"))
    _, feats = model.apply(variables, images, train=False, features=True)
    if feature not in feats:
      raise ModelError(f"{type(model).__name__} has no feature {feature!r}; it returns "
                       f"{sorted(feats)}.")
    values = feats[feature]
    return values.reshape(values.shape[0], -1).astype(np.float32), batch["label"], batch["mask"]

  # Replicated outputs: every process receives the whole global batch's rows.
  return jax.jit(step, out_shardings=sharding.replicated(mesh))


def embed(model: nn.Module, variables: Any,
          batches: Iterable[Mapping[str, np.ndarray]] | np.ndarray | jax.Array, *,
          feature: str = DEFAULT_FEATURE, mesh=None, progress: bool = False,
          total: int | None = None, device_input=None, batch_size: int = 64
          ) -> tuple[np.ndarray, np.ndarray | None]:
  """Features of every real example: (embeddings [N, D], labels [N] or None).

  Args:
    batches: network input images [N, H, W, 3] (an array: cut into batches
      of `batch_size`), or batches with "image" [b, H, W, 3] and optionally
      "label" and "mask" (as cnnjax.data.eval_iterator yields them, view
      "center"); rows whose mask is False are padding and are dropped.
      Labels come back when every batch has them, else None.
    feature: which entry of the model's feature dict ("pre_logits" is the
      embedding that feeds the classifier; others, e.g. a stage's map, are
      flattened).
    mesh: a 1-D 'data' mesh (default: every device); each batch is sharded
      over it.
    device_input: the `cnnjax.data.device_input(...)` that finishes uint8
      batches (eval_iterator's at boundary "uint8") in the jitted step.

  Rows come out in the order of the global batches (for one process, the
  order of the split or of the array).
  """
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  mesh = mesh or sharding.make_mesh()
  if isinstance(batches, (np.ndarray, jax.Array)):
    batches = array_batches(batches, batch_size, mesh.devices.size)
  step = _make_embed_step(model, feature, mesh, device_input)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  iterator = batches
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    iterator = tqdm(batches, total=total, desc=f"embed {feature}", unit="batch",
                    disable=jax.process_index() != 0 or not logs.progress_bars_shown())
  pieces, labels = [], []
  for local_batch in iterator:
    if not isinstance(local_batch, Mapping) or "image" not in local_batch:
      raise DataError("embedding takes an array of images [N, H, W, 3] or batches with "
                      "'image' (and optionally 'label' and 'mask', as "
                      "cnnjax.data.eval_iterator(view='center') yields them).")
    images = np.asarray(local_batch["image"]) if not isinstance(
        local_batch["image"], jax.Array) else local_batch["image"]
    if images.ndim != 4:
      raise DataError(f"embedding takes single images [b, H, W, 3]; got {images.shape}. "
                      "Use view='center'.")
    local_batch = dict(local_batch)
    local_batch.setdefault("mask", np.ones(images.shape[0], bool))
    labels.append(local_batch.get("label"))
    local_batch.setdefault("label", np.zeros(images.shape[0], np.int32))
    global_batch = sharding.global_batch(
        {key: local_batch[key] for key in ("image", "label", "mask", "window") if key in local_batch},
        mesh)
    values, batch_labels, mask = jax.device_get(step(variables, global_batch))
    keep = np.asarray(mask).astype(bool)
    pieces.append(np.asarray(values)[keep])
    if labels[-1] is not None:
      labels[-1] = np.asarray(batch_labels)[keep]
  if not pieces:
    raise DataError("the data yielded no batches to embed.")
  if any(label is None for label in labels):
    return np.concatenate(pieces), None
  return np.concatenate(pieces), np.concatenate(labels).astype(np.int64)


def array_batches(images: Any, batch_size: int, multiple: int = 1
                  ) -> Iterable[dict[str, np.ndarray]]:
  """[N, H, W, 3] -> batches of `batch_size` (a multiple of `multiple`), the last padded
  and masked, so one compiled step serves them all."""
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  if images.ndim != 4:
    raise DataError(f"embedding takes images [N, H, W, 3]; got shape {tuple(images.shape)}")
  size = -(-min(batch_size, max(images.shape[0], 1)) // multiple) * multiple
  for start in range(0, images.shape[0], size):
    chunk = np.asarray(images[start:start + size])
    count = chunk.shape[0]
    if count < size:
      chunk = np.concatenate([chunk, np.zeros((size - count,) + chunk.shape[1:], chunk.dtype)])
    yield {"image": chunk, "mask": np.arange(size) < count}


def embed_dataset(model: nn.Module, variables: Any, dataset: str, *, split: str | None = None,
                  batch_size: int = 256, data_dir: str | None = None,
                  image_size: int | None = None, normalize: str = "per_channel",
                  stats_split: str | None = None, feature: str = DEFAULT_FEATURE,
                  progress: bool = True, mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """`embed` over a dataset split read by cnnjax.data.eval_iterator (centre view).

  Use the normalisation the model was trained with (`normalize`, and
  `image_size`); `embed_workdir` takes both from the training config.
  """
  import math  # pylint: disable=import-outside-toplevel

  from cnnjax import data  # pylint: disable=import-outside-toplevel
  from cnnjax import sharding  # pylint: disable=import-outside-toplevel
  mesh = mesh or sharding.make_mesh()
  if batch_size % mesh.devices.size:
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  info = data.dataset_info(dataset, data_dir=data_dir)
  split = split or info.eval_split or info.train_split
  batches = data.eval_iterator(dataset, data_dir=data_dir, split=split,
                               global_batch_size=batch_size, view="center",
                               image_size=image_size, normalize=normalize,
                               stats_split=stats_split)
  device_input = data.device_input(dataset, normalize=normalize, data_dir=data_dir,
                                   stats_split=stats_split)
  total = None
  if split in info.splits:
    total = math.ceil(math.ceil(info.splits[split] / jax.process_count())
                      / (batch_size // jax.process_count()))
  return embed(model, variables, batches, feature=feature, mesh=mesh, progress=progress,
               total=total, device_input=device_input)


def embed_workdir(workdir: str, *, split: str | None = None, batch_size: int = 256,
                  which: str = "latest", use_ema: bool | None = None,
                  data_dir: str | None = None, feature: str = DEFAULT_FEATURE,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Embeddings of a split with a trained workdir's model and data settings."""
  from cnnjax import evaluate  # pylint: disable=import-outside-toplevel
  member = evaluate.load_member(workdir, which=which, use_ema=use_ema)
  settings = evaluate.data_settings(member.config["input"], split=split, data_dir=data_dir)
  return embed_dataset(member.model, member.variables, settings.dataset, split=settings.split,
                       batch_size=batch_size, data_dir=settings.data_dir,
                       image_size=settings.image_size, normalize=settings.normalize,
                       stats_split=settings.stats_split, feature=feature, progress=progress)


def _define_flags(flag_values) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  from cnnjax import _cli  # pylint: disable=g-import-not-at-top
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("workdir", None, "a trained workdir", **fv)
  flags.DEFINE_string("split", None, "default: the training config's eval split", **fv)
  flags.DEFINE_integer("batch_size", 256, "examples per batch", **fv)
  flags.DEFINE_string("feature", DEFAULT_FEATURE, "the feature to save", **fv)
  flags.DEFINE_enum("which", "latest", ("latest", "best"), "which checkpoint", **fv)
  flags.DEFINE_string("data_dir", None, "default: the training config's", **fv)
  flags.DEFINE_string("output", None, "the .npz file to write", **fv)
  flags.mark_flags_as_required(["workdir", "output"], **fv)
  _cli.define_verbose(flag_values)


def main(argv: Sequence[str] | None = None) -> int:
  """`cnnjax-embed`: embeddings of a split, saved as .npz (embeddings [N, D], labels [N])."""
  from cnnjax import _cli  # pylint: disable=g-import-not-at-top
  args, _ = _cli.parse(["cnnjax-embed", *(sys.argv[1:] if argv is None else argv)],
                       _define_flags, prog="cnnjax-embed", doc=main.__doc__)
  if argv is None:  # the command (a process setting; a caller's main(argv) keeps its logging)
    from cnnjax import logs  # pylint: disable=g-import-not-at-top
    logs.set_up(verbose=args.verbose)
  try:
    embeddings, labels = embed_workdir(args.workdir, split=args.split,
                                       batch_size=args.batch_size, which=args.which,
                                       data_dir=args.data_dir, feature=args.feature)
  except CnnjaxError as error:
    _cli.print_user_error(error)
    return 2
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    np.savez(args.output, embeddings=embeddings, labels=labels)
    print(f"{embeddings.shape[0]} embeddings of dimension {embeddings.shape[1]} "
          f"written to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
