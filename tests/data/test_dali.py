"""The DALI training input (cnnjax.dali), in DALI's CPU mode, against TensorFlow's reading of the same data."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e '.[dali]')")

import tensorflow as tf  # noqa: E402

from cnnjax import dali  # noqa: E402
from cnnjax.errors import ConfigError, DataError  # noqa: E402
from data_helpers import smooth_image  # noqa: E402

SIZE = 32


def _iterator(prepared, **kwargs):
  name, data_dir = prepared
  options = dict(global_batch_size=4, image_size=SIZE, process_index=0, process_count=1,
                 device="cpu", num_threads=1)
  options.update(kwargs)
  return dali.train_iterator(name, data_dir=data_dir, **options)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _jpeg(rng, height, width, quality=90) -> bytes:
  from PIL import Image
  noisy = smooth_image(rng, height, width).astype(np.int16) + rng.integers(-20, 21, (height, width, 3))
  buffer = io.BytesIO()
  Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


# ----------------------------------------------------------------------------
# Pixels: DALI on given windows against TensorFlow on the same windows.


def _round(image) -> np.ndarray:
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()


def _tf_resized_crop(encoded, plan_geometry, dct_method=""):
  """TF's inception path on a window: fused decode-and-crop, bilinear resize (no antialias), flip."""
  top, left, height, width, flip = plan_geometry
  crop = tf.image.decode_and_crop_jpeg(encoded, [top, left, height, width], channels=3,
                                       dct_method=dct_method)
  resized = tf.image.resize(tf.cast(crop, tf.float32), [SIZE * 2, SIZE * 2], "bilinear",
                            antialias=False)
  return _round(resized[:, ::-1] if flip else resized)


def test_inception_windows_match_tf_decode_and_crop():
  """DALI's decode-slice-resize-flip against TF's on the same windows, 0..255 scale, 24 JPEGs.

  Measured (DALI 2.4 CPU, TF 2.21): against the tf.data op (decode_and_crop_jpeg,
  whose default IDCT is libjpeg's fast one; DALI's is the accurate one):
  mean |diff| 0.97, 99th percentile 3, max 12. With TF's accurate IDCT
  the mean is 0.016 and the 99th percentile 0: what differs is then a
  column at the window's edge, where TF's fused crop upsamples the chroma
  without the neighbouring block (TF's fused and full decodes differ there
  by up to 11 themselves).
  """
  rng = np.random.default_rng(0)
  examples, geometries = [], []
  for k in range(24):
    encoded = _jpeg(rng, int(rng.integers(80, 200)), int(rng.integers(80, 200)))
    height, width = dali.image_hw(encoded)
    top, left, h, w = dali.inception_window(np.random.default_rng(k), height, width)
    flip = bool(k % 2)
    examples.append((encoded, dali.CropPlan((top, left), (h, w), (0.0, 0.0), (float(h), float(w)),
                                                  flip, "bilinear", (SIZE, 0, 0, 0))))
    geometries.append((top, left, h, w, flip))
  ours = dali.render_plans(examples, image_size=SIZE * 2, antialias=False).astype(np.int32)
  pipeline = np.stack([_tf_resized_crop(e, g) for (e, _), g in zip(examples, geometries)])
  accurate = np.stack([_tf_resized_crop(e, g, "INTEGER_ACCURATE")
                       for (e, _), g in zip(examples, geometries)])
  error = np.abs(ours - pipeline)
  assert error.mean() < 1.5 and np.percentile(error, 99) <= 4 and error.max() <= 24
  error = np.abs(ours - accurate)
  assert error.mean() < 0.05 and np.percentile(error, 99) <= 1


@pytest.mark.parametrize("preset", ["alexnet", "scale_jitter"])
def test_resize_then_crop_presets_match_tf(preset):
  """One resize of the crop's region against TF's resize of the whole image, then crops.

  TF side: full decode (accurate IDCT, so only the geometry is compared),
  shorter side resized with antialiased bilinear, (centre square,) the
  random crop, flip. Measured: mean |diff| 0.0001, max 1 (rounding), both presets.
  """
  rng = np.random.default_rng(1)
  settings = dali.make_preset(preset, SIZE)
  examples, references = [], []
  for k in range(16):
    encoded = _jpeg(rng, int(rng.integers(40, 160)), int(rng.integers(40, 160)))
    height, width = dali.image_hw(encoded)
    plan = settings.plan(np.random.default_rng(k), height, width)
    examples.append((encoded, plan))
    draws = np.random.default_rng(k)  # the same draws, in the order Preset.plan makes them
    target = (int(draws.integers(settings.options["scale_min"], settings.options["scale_max"] + 1))
              if preset == "scale_jitter" else settings.options["resize_size"])
    new_h, new_w = dali.shorter_side_size(height, width, target)
    image = tf.image.resize(tf.cast(tf.image.decode_jpeg(encoded, channels=3,
                                                         dct_method="INTEGER_ACCURATE"), tf.float32),
                            [new_h, new_w], "bilinear", antialias=True)
    if preset == "alexnet":
      top, left = (new_h - target) // 2, (new_w - target) // 2
      image, new_h, new_w = image[top:top + target, left:left + target], target, target
    top, left = int(draws.integers(new_h - SIZE + 1)), int(draws.integers(new_w - SIZE + 1))
    flip = bool(draws.random() < 0.5)
    assert flip == plan.flip
    if preset == "alexnet":
      assert plan.window == (settings.options["resize_size"], top, left, int(flip))
    image = image[top:top + SIZE, left:left + SIZE]
    references.append(_round(image[:, ::-1] if flip else image))
  ours = dali.render_plans(examples, image_size=SIZE, antialias=True).astype(np.int32)
  error = np.abs(ours - np.stack(references))
  assert error.mean() < 0.01 and error.max() <= 1


# ----------------------------------------------------------------------------
# The stream: exact resume, shares, seeds, windows.


def test_resume_at_a_step_equals_the_uninterrupted_stream(prepared):
  """15 examples, 4 per batch: the batches cross epoch boundaries (steps 3 and 7)."""
  uninterrupted = _take(_iterator(prepared, seed=3), 8)
  resumed = _take(_iterator(prepared, seed=3, start_step=5), 3)
  for expected, got in zip(uninterrupted[5:], resumed):
    for key in ("image", "label", "window"):
      np.testing.assert_array_equal(got[key], expected[key])
  labels = np.concatenate([b["label"] for b in uninterrupted[:4]])[:15]
  assert sorted(labels.tolist()) == [0] * 5 + [1] * 5 + [2] * 5  # an epoch is a permutation
  assert all(b["image"].shape == (4, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
             for b in uninterrupted)
  assert all((b["window"] == [SIZE, 0, 0, 0]).all() for b in uninterrupted)


def test_seeds_decide_the_batches(prepared):
  first, again, other = (_take(_iterator(prepared, seed=s, augment="scale_jitter"), 2)
                         for s in (0, 0, 1))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, other))


def test_parallel_python_workers_yield_the_same_batches(prepared):
  """py_workers moves the per-example reads into spawned processes; the stream is unchanged."""
  in_thread = _take(_iterator(prepared, seed=2), 3)
  in_workers = _take(_iterator(prepared, seed=2, py_workers=1), 3)
  for a, b in zip(in_thread, in_workers):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_process_shares_are_disjoint_and_cover_the_split(prepared):
  split = dali.prepared_split(*prepared, split="train")
  preset = dali.make_preset("inception", SIZE)
  indices = [dali.record_index(f, n) for f, n in zip(split.files, split.shard_lengths)]
  shares = []
  for process in range(4):
    source = dali.ExampleSource(split, indices, preset, seed=0, process_index=process,
                                      process_count=4, local_batch=2, start_step=0)
    shares.append([source.example_at(t) for t in range(source.share_size)])
    assert sorted(shares[-1]) == list(range(source.share_start,
                                            source.share_start + source.share_size))
  assert [len(s) for s in shares] == [4, 4, 4, 3]  # tfds.even_splits' sizes
  assert sorted(sum(shares, [])) == list(range(15))
  two = _iterator(prepared, global_batch_size=4, process_count=2, process_index=1)
  assert next(two)["image"].shape == (2, SIZE, SIZE, 3)


def test_alexnet_windows_place_the_crop_in_its_square(prepared):
  resize_size = 40
  batches = _take(_iterator(prepared, augment="alexnet", augment_kwargs={"resize_size": resize_size},
                            global_batch_size=8), 2)
  window = np.concatenate([b["window"] for b in batches])
  assert (window[:, 0] == resize_size).all()
  assert (window[:, 1:3] >= 0).all() and (window[:, 1:3] <= resize_size - SIZE).all()
  assert set(window[:, 3].tolist()) == {0, 1}


def test_sharded_batches_are_global_arrays(prepared):
  import jax
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = next(_iterator(prepared, sharding=sharding, seed=5))
  plain = next(_iterator(prepared, seed=5))
  assert isinstance(sharded["image"], jax.Array) and sharded["image"].sharding == sharding
  for key in plain:
    np.testing.assert_array_equal(np.asarray(sharded[key]), plain[key])


# ----------------------------------------------------------------------------
# Errors that name the cause and the fix.


def _copy_prepared(prepared, tmp_path) -> str:
  directory = dali.dataset_directory(*prepared)
  copy = str(tmp_path / "prepared")
  shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.idx"))
  return copy


def test_a_corrupt_jpeg_is_named(prepared, tmp_path):
  copy = _copy_prepared(prepared, tmp_path)
  path = os.path.join(copy, "cnnjax_image_folder-train.tfrecord-00000-of-00001")
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  example = tf.train.Example.FromString(records[6])
  image = example.features.feature["image"].bytes_list.value[0]
  example.features.feature["image"].bytes_list.value[0] = image[:len(image) // 2]
  records[6] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  iterator = dali.train_iterator(copy, global_batch_size=15, image_size=SIZE, process_index=0,
                                       process_count=1, device="cpu", num_threads=1)
  with pytest.raises(DataError, match=r"cannot decode example 6 of .*record 6 of .*prepare the dataset again"):
    next(iterator)


def test_unprepared_datasets_say_how_to_prepare_them(tmp_path):
  empty_folder = tmp_path / "photos"
  empty_folder.mkdir()
  for name in ("imagenet2012", "image_folder:" + str(empty_folder)):
    with pytest.raises(DataError, match=r"is not prepared in data_dir .*prepare it once"):
      dali.train_iterator(name, data_dir=str(tmp_path / "data"), global_batch_size=2,
                                process_index=0, process_count=1, device="cpu")
  with pytest.raises(DataError, match="does not exist"):
    dali.prepared_split("image_folder:" + str(tmp_path / "nowhere"), str(tmp_path))


def test_empty_split_and_bad_options_are_named(prepared, tmp_path):
  copy = _copy_prepared(prepared, tmp_path)
  with open(os.path.join(copy, "dataset_info.json")) as f:
    info = json.load(f)
  for split in info["splits"]:
    if split["name"] == "val":
      split["shardLengths"] = []
  with open(os.path.join(copy, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  options = dict(global_batch_size=2, process_index=0, process_count=1, device="cpu")
  with pytest.raises(DataError, match="split 'val' has no examples"):
    dali.train_iterator(copy, split="val", **options)
  with pytest.raises(DataError, match="no split 'tets'.*'test'|no split 'tets'"):
    dali.train_iterator(copy, split="tets", **options)
  with pytest.raises(ConfigError, match="unknown augmentation preset 'inceptoin' for the DALI.*'inception'"):
    dali.train_iterator(copy, augment="inceptoin", **options)
  with pytest.raises(ConfigError, match=r"'alexnet' does not take \['pad'\]"):
    dali.train_iterator(copy, augment="alexnet", augment_kwargs={"pad": 4}, **options)


def test_missing_dali_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "nvidia.dali", None)
  with pytest.raises(ConfigError, match=r'pip install -e "\.\[dali\]"'):
    dali.build_pipeline(lambda info: None, batch_size=1, image_size=8, antialias=False)


def test_runs_without_tensorflow(prepared):
  """On accelerator hosts there is no TensorFlow: import and iterate with it made unimportable."""
  name, data_dir = prepared
  dali.prepared_split(name, data_dir)  # the index files exist (no need for a writable dir)
  code = (
      "import sys\n"
      "sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None\n"
      "from cnnjax import dali\n"
      f"it = dali.train_iterator({name!r}, data_dir={data_dir!r}, global_batch_size=3,\n"
      f"    image_size={SIZE}, process_index=0, process_count=1, device='cpu', num_threads=1)\n"
      "batch = next(it)\n"
      "assert batch['image'].shape == (3, 32, 32, 3), batch['image'].shape\n"
      "assert sys.modules['tensorflow'] is None\n"
      "print('ok')\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
