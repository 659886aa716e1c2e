"""What the DALI input reads, checked without DALI: Example protos, record framing and
checksums, index files, image headers and the crop draws (numpy only, against TensorFlow)."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cnnjax import dali
from cnnjax.dali import records
from cnnjax.errors import DataError
from data_helpers import smooth_image


def test_parse_example_equals_tensorflows_serialization():
  features = {
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8\x00binary", b""])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
      "ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[0, -1, 2**62, -2**63, 300])),
      "scores": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, -1.25, 3e8])),
      "empty": tf.train.Feature(int64_list=tf.train.Int64List(value=[])),
      "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=["naïve".encode()])),
  }
  serialized = tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()
  parsed = dali.parse_example(serialized)
  assert set(parsed) == set(features)
  assert [bytes(v) for v in parsed["image"]] == [b"\xff\xd8\x00binary", b""]
  assert parsed["label"] == [7]
  assert parsed["ids"] == [0, -1, 2**62, -2**63, 300]
  assert parsed["scores"] == [0.5, -1.25, 3e8]
  assert parsed["empty"] == []
  assert bytes(parsed["name"][0]).decode() == "naïve"


def test_index_matches_the_records_tensorflow_reads(prepared, tmp_path):
  split = dali.prepared_split(*prepared, split="train")
  path = split.files[0]
  copy = str(tmp_path / os.path.basename(path))
  shutil.copy(path, copy)
  index = dali.record_index(copy, expected=15)
  records = [r.numpy() for r in tf.data.TFRecordDataset(copy)]
  assert len(index) == len(records) == 15
  with open(copy, "rb") as f:
    data = f.read()
  for (offset, size), record in zip(index.tolist(), records):
    assert data[offset + 12:offset + size - 4] == record
  assert index[-1].sum() == len(data)
  # Cached beside the data: the shard's size and mtime, then "offset size" lines...
  with open(copy + ".idx") as f:
    stat = os.stat(copy)
    assert f.readline().split()[-2:] == [f"size={stat.st_size}", f"mtime_ns={stat.st_mtime_ns}"]
    assert [tuple(map(int, line.split())) for line in f] == [tuple(r) for r in index.tolist()]
  # ...rebuilt when stale, and written to index_dir when asked.
  with open(copy + ".idx") as f:
    stamp = f.readline()
  with open(copy + ".idx", "w") as f:
    f.write(stamp + "0 10\n")
  np.testing.assert_array_equal(dali.record_index(copy, expected=15), index)
  elsewhere = dali.record_index(copy, expected=15, index_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(elsewhere, index)
  assert len(os.listdir(tmp_path / "cache")) == 1
  # The prepared record parses as TensorFlow parses it.
  parsed = dali.parse_example(records[0])
  example = tf.train.Example.FromString(records[0])
  assert bytes(parsed["image"][0]) == example.features.feature["image"].bytes_list.value[0]
  assert parsed["label"] == list(example.features.feature["label"].int64_list.value)


def test_image_header_sizes_equal_pillows():
  from PIL import Image
  rng = np.random.default_rng(1)
  for height, width, options in [(37, 53, {"format": "JPEG"}), (64, 17, {"format": "PNG"}),
                                 (80, 96, {"format": "JPEG", "progressive": True}),
                                 (21, 40, {"format": "JPEG", "exif": b"Exif\x00\x00" + b"\x00" * 64})]:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(rng, height, width)).save(buffer, **options)
    assert dali.image_hw(buffer.getvalue()) == (height, width)
  assert dali.image_hw(b"GIF89a....") is None
  assert dali.image_hw(b"\xff\xd8\xff\xd9") is None


def test_inception_window_statistics_match_tf():
  """Area and aspect distributions of 3000 draws vs tf.image.stateless_sample_distorted_bounding_box."""
  height, width, count = 120, 200, 3000

  @tf.function
  def tf_windows(seeds):
    def one(seed):
      _, size, _ = tf.image.stateless_sample_distorted_bounding_box(
          [height, width, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      return size[:2]
    return tf.map_fn(one, seeds, fn_output_signature=tf.int32)

  theirs = tf_windows(tf.stack([tf.range(count), tf.range(count) * 7 + 1], 1)).numpy().astype(float)
  ours = np.array([dali.inception_window(np.random.default_rng(k), height, width)[2:]
                   for k in range(count)], float)
  for name, sizes in (("tf", theirs), ("ours", ours)):
    area = sizes[:, 0] * sizes[:, 1] / (height * width)
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1.0, name
  area_theirs, area_ours = (s[:, 0] * s[:, 1] / (height * width) for s in (theirs, ours))
  aspect_theirs, aspect_ours = (s[:, 1] / s[:, 0] for s in (theirs, ours))
  assert abs(area_ours.mean() - area_theirs.mean()) < 0.02
  assert abs(np.median(area_ours) - np.median(area_theirs)) < 0.03
  assert abs(aspect_ours.mean() - aspect_theirs.mean()) < 0.02
  whole_theirs = np.mean((theirs == [height, width]).all(1))
  whole_ours = np.mean((ours == [height, width]).all(1))
  assert abs(whole_ours - whole_theirs) < 0.02


# ----------------------------------------------------------------------------
# Checksums, damaged records and stale indexes: named errors, never damaged bytes.


def _framed(payload: bytes) -> bytes:
  """One TFRecord frame as TensorFlow writes it."""
  path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"frame-{os.getpid()}.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(payload)
  with open(path, "rb") as f:
    data = f.read()
  os.remove(path)
  return data


def test_checksums_equal_tensorflows():
  for payload in (b"", b"x", bytes(range(256)) * 5):
    frame = _framed(payload)
    assert records.masked_crc32c(frame[:8]) == int.from_bytes(frame[8:12], "little")
    assert bytes(records.record_payload(frame)) == payload


def _example_source(prepared, tmp_path):
  from cnnjax.dali import plans
  directory = dali.dataset_directory(*prepared)
  copy = str(tmp_path / "prepared")
  shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.idx"))
  split = dali.prepared_split(copy, split="train")
  preset = plans.make_preset("inception", 32)

  def source():
    indices = [dali.record_index(f, n) for f, n in zip(split.files, split.shard_lengths)]
    return plans.ExampleSource(split, indices, preset, seed=0, process_index=0, process_count=1,
                               local_batch=4, start_step=0)
  return split.files[0], source


def _flip(path: str, position: int) -> None:
  with open(path, "r+b") as f:
    f.seek(position)
    byte = f.read(1)
    f.seek(position)
    f.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_payload_byte_is_named_not_returned(prepared, tmp_path):
  """TensorFlow raises DataLossError here; the reader without checksums returned the damaged bytes."""
  path, source = _example_source(prepared, tmp_path)
  clean = source()
  offset, size = clean.indices[0][3]
  _flip(path, int(offset + size - 40))  # inside record 3's image bytes
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(path))
  reader = source()
  reader.read(2)  # its neighbours are intact
  with pytest.raises(DataError, match=r"record 3 of .*-train\.tfrecord.*data's checksum"):
    reader.read(3)


def test_a_flipped_length_checksum_is_named(prepared, tmp_path):
  path, source = _example_source(prepared, tmp_path)
  indexed = source()  # the index is made (and cached) before the damage
  offset, _ = indexed.indices[0][5]
  _flip(path, int(offset + 9))  # a bit of record 5's length CRC
  with pytest.raises(DataError, match=r"record 5 of .*-train\.tfrecord.*length's checksum"):
    indexed.read(5)
  with pytest.raises(DataError, match=r"length of record 5 .*fails its checksum"):
    records.scan_records(path)


@pytest.mark.parametrize("payload", [b"\x0a\xff", b"\x0a\x05\x0a\x03\x0a\x01\xff",
                                     b"\x0a\x0c\x0a\x0a\x0a\x02\xc3\x28\x12\x04\x1a\x02\x08\x01",
                                     b"\x0b"])
def test_malformed_examples_are_data_errors(payload):
  """Truncated varints and fields, a non-UTF-8 feature name, an unknown wire type."""
  with pytest.raises(DataError, match="not a tf.train.Example"):
    dali.parse_example(payload)


def test_a_shard_rewritten_in_place_with_the_same_size_is_indexed_anew(tmp_path):
  """Two records of 10 and 20 bytes rewritten as 20 and 10: the same size, count and end; the
  index of the old file would cut the records in the wrong places."""
  path = str(tmp_path / "shard.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"a" * 10)
    writer.write(b"b" * 20)
  first = dali.record_index(path, expected=2)
  assert first[:, 1].tolist() == [26, 36]
  stat = os.stat(path)
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b"c" * 20)
    writer.write(b"d" * 10)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
  assert os.path.getsize(path) == stat.st_size
  assert dali.record_index(path, expected=2)[:, 1].tolist() == [36, 26]
  with open(path + ".idx") as f:
    assert f.readline().startswith(records.INDEX_STAMP)


def test_an_image_folder_changed_since_it_was_prepared_is_not_read_stale(tmp_path, monkeypatch):
  """An image moved to another class keeps its size and mtime; the preparation made before the
  move labels it with the old class. DALI must name that, and read the new preparation once
  there is one."""
  import cnnjax.data
  from cnnjax.data import sources
  from data_helpers import write_image
  folder, data_dir = tmp_path / "photos", str(tmp_path / "data")
  rng = np.random.default_rng(0)
  for class_name in ("ant", "bee"):
    for i in range(3):
      write_image(str(folder / "train" / class_name / f"{class_name}{i}.jpg"),
                  smooth_image(rng, 40, 48), quality=90)
  name = f"image_folder:{folder}"
  cnnjax.data.dataset_info(name, data_dir=data_dir)
  before = dali.prepared_split(name, data_dir)
  os.rename(folder / "train" / "ant" / "ant0.jpg", folder / "train" / "bee" / "ant0.jpg")
  with pytest.raises(DataError, match=r"image folder .*photos has changed since it was prepared"
                                      r".*moved between classes.*dataset_info"):
    dali.prepared_split(name, data_dir)
  monkeypatch.setattr(sources, "_SOURCES", {})  # as a new process sees it
  cnnjax.data.dataset_info(name, data_dir=data_dir)  # prepares the folder as it is now
  after = dali.prepared_split(name, data_dir)
  assert after.directory != before.directory and after.num_examples == 6

  def labels(split):
    out = {}
    for path, count in zip(split.files, split.shard_lengths):
      for offset, size in dali.record_index(path, count):
        with open(path, "rb") as f:
          f.seek(offset)
          example = records.parse_example(records.record_payload(f.read(size)))
        out[bytes(example["file_name"][0]).decode()] = example["label"][0]
    return out
  assert labels(after)[os.path.join("train", "bee", "ant0.jpg")] == 1  # bee
  assert labels(before)[os.path.join("train", "ant", "ant0.jpg")] == 0  # the old copy: ant
