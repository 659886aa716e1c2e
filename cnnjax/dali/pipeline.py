"""The DALI graph (decode the plan's slice, resize, mirror) and the training iterator."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnnjax._processes import local_batch_size, resolve_process
from cnnjax.dali.plans import CropPlan, ExampleSource, make_preset, plan_arrays, share_bounds
from cnnjax.dali.records import prepared_split, record_index
from cnnjax.errors import ConfigError, DataError

INSTALL_HINT = 'pip install -e ".[dali]"  (or: pip install nvidia-dali-cuda120)'

# ----------------------------------------------------------------------------
# The DALI graph and the iterator.


def _import_dali():
  try:
    import nvidia.dali  # pylint: disable=import-outside-toplevel
    from nvidia.dali import fn, types  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ConfigError(f"the DALI input needs NVIDIA DALI, which is not installed ({error}); "
                      f"install it with {INSTALL_HINT}, or use cnnjax.data.train_iterator") from error
  return nvidia.dali, fn, types


def build_pipeline(source, *, batch_size: int, image_size: int, antialias: bool, device: str = "cpu",
                   device_id: int | None = None, num_threads: int = 2, py_workers: int = 0,
                   prefetch: int = 2):
  """A built DALI pipeline: per-example (encoded, plan arrays...) from `source` -> image, label, window.

  `source` is a per-sample callable (SampleInfo -> `plan_arrays`). device
  "gpu" decodes with nvJPEG ("mixed") on `device_id`; "cpu" runs every
  operator on the CPU (device_id None).
  """
  dali, fn, types = _import_dali()
  gpu = device == "gpu"

  @dali.pipeline_def(batch_size=batch_size, num_threads=num_threads,
                     device_id=device_id if gpu else None, prefetch_queue_depth=prefetch,
                     py_num_workers=max(1, py_workers), py_start_method="spawn",
                     exec_dynamic=True)
  def graph():
    (encoded, anchor, shape, roi_start, roi_end, flip, interpolation, label,
     window) = fn.external_source(source, num_outputs=9, batch=False, parallel=py_workers > 0,
                                  dtype=[types.UINT8] + [None] * 8)
    # EXIF orientation is ignored, as TensorFlow's decoders ignore it; fancy
    # upsampling on the GPU matches libjpeg-turbo's (and TF's) chroma.
    decoder_options = {"jpeg_fancy_upsampling": True} if gpu else {}
    images = fn.decoders.image_slice(encoded, anchor, shape, axis_names="HW",
                                     device="mixed" if gpu else "cpu", output_type=types.RGB,
                                     adjust_orientation=False, **decoder_options)
    images = fn.resize(images, size=[image_size, image_size], roi_start=roi_start, roi_end=roi_end,
                       interp_type=fn.cast(interpolation, dtype=types.INTERP_TYPE),
                       antialias=antialias)
    images = fn.flip(images, horizontal=flip)
    return images, label, window

  pipeline = graph()
  pipeline.build()
  return pipeline


def render_plans(examples: Sequence[tuple[bytes | np.ndarray, CropPlan]], *, image_size: int,
                 antialias: bool, device: str = "cpu") -> np.ndarray:
  """uint8 [n, S, S, 3]: the DALI graph applied to explicit (encoded image, plan) pairs.

  For checks against other pipelines and for inspection; training uses
  `train_iterator`.
  """
  arrays = [plan_arrays(np.frombuffer(bytes(e), np.uint8), 0, p) for e, p in examples]

  def source(sample_info):
    return arrays[sample_info.idx_in_batch]

  pipeline = build_pipeline(source, batch_size=len(arrays), image_size=image_size,
                            antialias=antialias, device=device, device_id=0, num_threads=1,
                            prefetch=1)
  images = pipeline.run()[0]
  return np.stack([np.array(images.as_cpu()[i]) for i in range(len(arrays))])


def _device_rows(sharding, global_batch: int, local_batch: int) -> list[tuple[Any, int, int]]:
  """(device, first row in this process's batch, rows) per addressable device of a batch sharding."""
  slices = []
  for device, index in sharding.addressable_devices_indices_map((global_batch,)).items():
    rows = index[0] if index else slice(None)
    start, stop, _ = rows.indices(global_batch)
    slices.append((start, stop, device))
  slices.sort(key=lambda s: (s[0], s[2].id))
  distinct = sorted({(a, b) for a, b, _ in slices})
  offsets, offset = {}, 0
  for start, stop in distinct:
    offsets[(start, stop)] = offset
    offset += stop - start
  if offset != local_batch:
    raise ConfigError(f"the sharding gives this process {offset} rows of the global batch "
                      f"{global_batch}, not global_batch_size / process_count = {local_batch}; "
                      "shard the batch dimension over the 'data' mesh axis")
  return [(device, offsets[(a, b)], b - a) for a, b, device in slices]


def _decode_failure(error: Exception, sources: Sequence[ExampleSource], step: int,
                    rows: Sequence[int], lookahead: int) -> DataError:
  """A DataError naming the example of `step` that DALI could not decode (found by decoding each)."""
  dali, fn, types = _import_dali()
  candidates = []  # this step's examples, then those of the steps DALI may have prefetched
  for ahead in range(1 + lookahead):
    for source, count in zip(sources, rows):
      for row in range(count):
        position = (step + ahead) * source.local_batch + source.row_offset + row
        candidates.append((source, source.example_at(position)))

  encoded_candidates = [source.read(example)[0] for source, example in candidates]

  # Synchronous and one example per run, so that run k fails exactly when candidate k does.
  @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1,
                     exec_pipelined=False, exec_async=False)
  def probe():
    encoded = fn.external_source(lambda info: encoded_candidates[info.iteration], batch=False,
                                 dtype=types.UINT8)
    return fn.decoders.image(encoded, device="cpu", adjust_orientation=False)

  pipeline = probe()
  pipeline.build()
  for source, example in candidates:
    try:
      pipeline.run()
    except Exception as decode_error:  # noqa: BLE001 - DALI reports decoder errors as RuntimeError
      return DataError(f"cannot decode {source.describe(example)} ({_brief(decode_error)}); "
                       "fix or remove the image and prepare the dataset again")
  return DataError(f"the DALI pipeline failed at step {step}: {_brief(error)}")


def _brief(error: Exception, limit: int = 300) -> str:
  """DALI's multi-line error text on one line, shortened."""
  text = " ".join(str(error).split())
  return text if len(text) <= limit else text[:limit] + "..."



def train_iterator(dataset: str, *, global_batch_size: int, data_dir: str | os.PathLike | None = None,
                   split: str = "train", augment: str = "inception",
                   augment_kwargs: dict[str, Any] | None = None, image_size: int = 224,
                   seed: int = 0, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None, sharding=None, device: str = "auto",
                   num_threads: int | None = None, py_workers: int = 0, prefetch: int = 2,
                   index_dir: str | None = None) -> Iterator[dict[str, Any]]:
  """Endless stream of this process's share of each global training batch, decoded by DALI.

  Yields {"image": uint8 [b, S, S, 3], "label": int32 [b], "window": int32
  [b, 4]}, b = global_batch_size // process_count, as
  `cnnjax.data.train_iterator(..., boundary="uint8")` does (numpy),
  or, given `sharding` (a batch sharding of the global batch), global
  `jax.Array`s of shape [global_batch_size, ...] placed with it.

  Args:
    dataset, data_dir, split: a prepared dataset (see `dataset_directory`).
    augment, augment_kwargs, image_size: the preset (PRESETS) and its options;
      colour options (photometric, pca_color, ...) are accepted and left to
      the step's `DeviceInput`, as on the tf.data path.
    seed, start_step, process_index, process_count: the stream (module docstring).
    sharding: place batches with it (on GPU: one DALI pipeline per local device,
      decoded into that device's memory).
    device: "gpu" (nvJPEG), "cpu", or "auto": "gpu" when JAX's default backend is.
    num_threads: DALI's CPU threads per pipeline (default: the CPU count, at most 8).
    py_workers: processes running the per-example Python reads in parallel
      (0: DALI's own thread; more helps when one core cannot keep up).
    prefetch: batches each pipeline prepares ahead.
    index_dir: where index files go (default beside the data, else ~/.cache).
  """
  preset = make_preset(augment, image_size, augment_kwargs)
  process_index, process_count = resolve_process(process_index, process_count, ConfigError)
  local_batch = local_batch_size(global_batch_size, process_count, ConfigError)
  if start_step < 0:
    raise ConfigError(f"start_step must be >= 0, got {start_step}")
  device = _resolve_device(device)
  prepared, indices = _prepared_share(dataset, data_dir, split, process_index, process_count,
                                      index_dir)
  num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
  on_devices = device == "gpu" and sharding is not None
  placements = (_device_rows(sharding, global_batch_size, local_batch) if on_devices
                else [(None, 0, local_batch)])
  sources = [ExampleSource(prepared, indices, preset, row_offset=offset, seed=seed,
                           process_index=process_index, process_count=process_count,
                           local_batch=local_batch, start_step=start_step)
             for _, offset, _ in placements]
  pipelines = [build_pipeline(source, batch_size=rows, image_size=image_size,
                              antialias=preset.antialias, device=device,
                              device_id=getattr(dev, "local_hardware_id", None) or 0,
                              num_threads=num_threads, py_workers=py_workers, prefetch=prefetch)
               for source, (dev, _, rows) in zip(sources, placements)]
  return _batches(pipelines, sources, placements, start_step, sharding, global_batch_size,
                  on_devices, prefetch)


def _resolve_device(device: str) -> str:
  """"gpu" or "cpu" (ConfigError for another value; "auto" follows JAX's default backend)."""
  if device not in ("auto", "gpu", "cpu"):
    raise ConfigError(f"device must be 'auto', 'gpu' or 'cpu', got {device!r}")
  _import_dali()
  if device == "auto":
    import jax  # pylint: disable=import-outside-toplevel
    device = "gpu" if jax.default_backend() == "gpu" else "cpu"
  return device


def _prepared_share(dataset: str, data_dir, split: str, process_index: int, process_count: int,
                    index_dir: str | None):
  """(the prepared split, its shards' record indices); DataError for an empty share."""
  prepared = prepared_split(dataset, data_dir, split)
  start, stop = share_bounds(prepared.num_examples, process_index, process_count)
  if stop <= start:
    raise DataError(f"dataset {dataset!r} split {split!r} has no examples for process "
                    f"{process_index} of {process_count} ({prepared.num_examples} in all)")
  return prepared, [record_index(f, n, index_dir)
                    for f, n in zip(prepared.files, prepared.shard_lengths)]


def _batches(pipelines, sources, placements, start_step: int, sharding, global_batch: int,
             on_devices: bool, prefetch: int) -> Iterator[dict[str, Any]]:
  step = start_step
  while True:
    try:
      outputs = [pipeline.run() for pipeline in pipelines]
    except DataError:
      raise
    except Exception as error:  # noqa: BLE001 - DALI raises RuntimeError for decoder failures
      raise _decode_failure(error, sources, step, [rows for _, _, rows in placements],
                            prefetch) from error
    if on_devices:
      yield _device_batch(outputs, placements, sharding, global_batch)
    else:
      (images, labels, windows), = outputs
      batch = {"image": np.array(images.as_cpu().as_array()),
               "label": np.array(labels.as_array()), "window": np.array(windows.as_array())}
      if sharding is not None:
        import jax  # pylint: disable=import-outside-toplevel
        batch = {k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:])
                 for k, v in batch.items()}
      yield batch
    step += 1


def _device_batch(outputs, placements, sharding, global_batch: int) -> dict[str, Any]:
  """Global jax.Arrays from each device's pipeline outputs (images stay in device memory)."""
  import jax  # pylint: disable=import-outside-toplevel
  images, labels, windows = [], [], []
  for (image_list, label_list, window_list), (device, _, _) in zip(outputs, placements):
    # A copy: DALI reuses its output buffers once the pipeline runs again.
    images.append(jax.dlpack.from_dlpack(image_list.as_tensor()).copy())
    labels.append(jax.device_put(np.array(label_list.as_array()), device))
    windows.append(jax.device_put(np.array(window_list.as_array()), device))
  shape = images[0].shape[1:]
  return {"image": jax.make_array_from_single_device_arrays((global_batch,) + shape, sharding, images),
          "label": jax.make_array_from_single_device_arrays((global_batch,), sharding, labels),
          "window": jax.make_array_from_single_device_arrays((global_batch, 4), sharding, windows)}
