"""NVIDIA DALI training input: prepared tfds TFRecords -> uint8 batches, decoded on the GPU.

An alternative to `cnnjax.data.train_iterator` for accelerator hosts without
TensorFlow (optional extra: `pip install -e ".[dali]"`). It reads what tfds
(or cnnjax's `image_folder:` source) prepared once, elsewhere:

  <data_dir>/<name>/[<config>/]<version>/dataset_info.json, features.json,
                                         <name>-<split>.tfrecord-XXXXX-of-YYYYY

and yields what `train_iterator(..., boundary="uint8")` yields:
{"image": uint8 [b, S, S, 3], "label": int32 [b], "window": int32 [b, 4]};
colour distortions and normalisation stay in the jitted step
(`cnnjax.preprocessing.device.DeviceInput`, same window semantics).

Where the work happens:

  Python (an `fn.external_source` callback, one call per example)
    position t = step * b + row  ->  (epoch, place) = divmod(t, share size)
    example = share start + permutation(seed, process, epoch)[place]
    record bytes by offset (an index file per shard, built here once)
    -> tf.train.Example parsed by hand -> encoded image, label
    -> height/width from the JPEG/PNG header -> the preset's crop plan,
       drawn with numpy from (seed, process, t)
  DALI (nvJPEG / the hardware JPEG decoder with device="gpu"; libjpeg-turbo on the CPU)
    decode only the plan's slice -> resize its region to S x S -> mirror

Every random choice is a pure function of (seed, process, epoch) or
(seed, process, t), so `start_step=n` yields exactly the batches an
uninterrupted iterator yields after n batches, whatever the number of
threads, workers or local devices. Each process reads its own contiguous
share of the split (the sizes of `tfds.even_splits`). The order and draws
are this module's own: equal in distribution to the tf.data pipeline's,
not equal batch for batch.

Geometry, as the presets of `cnnjax.data.augment` (device path):
  inception     TF's sample_distorted_bounding_box draw (area 8-100%, aspect
                3/4..4/3, 10 attempts, else the whole image), decoded
                cropped, resized to S with an interpolation drawn from
                `interpolations` (no antialiasing, as there; "area" is DALI's
                triangular filter, close to TF's area average), flipped;
                window (S, 0, 0, 0)
  scale_jitter  shorter side -> U{scale_min..scale_max}, a random S crop,
                flipped: decoded as the crop's region of the original and
                resized once (antialiased bilinear); window (S, 0, 0, 0)
  alexnet       shorter side -> resize_size, the centre square, a random S
                crop, flipped: one region, one resize; window
                (resize_size, top, left, flipped)

Importing this module needs numpy only; DALI and JAX are imported when an
iterator is built. It lives outside `cnnjax.data` because importing any
module of that package runs its __init__, which imports TensorFlow.

Modules: records (prepared files, index, Example parser, image headers),
plans (the stream's numpy draws and per-example reads), pipeline (the DALI
graph and `train_iterator`).
"""

from cnnjax.dali.pipeline import INSTALL_HINT, build_pipeline, render_plans, train_iterator
from cnnjax.dali.plans import (PRESETS, CropPlan, ExampleSource, epoch_permutation, example_rng,
                               inception_window, make_preset, share_bounds, shorter_side_size)
from cnnjax.dali.records import (dataset_directory, image_hw, parse_example, prepared_split,
                                 record_index, resolve_data_dir, scan_records)

__all__ = [
    "INSTALL_HINT", "PRESETS", "CropPlan", "ExampleSource", "build_pipeline", "dataset_directory",
    "epoch_permutation", "example_rng", "image_hw", "inception_window", "make_preset",
    "parse_example", "prepared_split", "record_index", "render_plans", "resolve_data_dir",
    "scan_records", "share_bounds", "shorter_side_size", "train_iterator",
]
