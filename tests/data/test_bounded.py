"""The bounded-resolution copy (`max_resolution`): what it stores and how training reads it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from data_helpers import smooth_image, write_image
from PIL import Image

import cnnjax.data
from cnnjax.data import sources
from cnnjax.data.bounded import bounded_builder, check_bounded_source
from cnnjax.data.sources import get_source
from cnnjax.errors import DataError

BOUND = 96


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> str:
  """JPEGs larger and smaller than BOUND (both orientations) and PNGs at and above it, 2 classes."""
  root = str(tmp_path_factory.mktemp("bounded_folder"))
  rng = np.random.default_rng(3)
  sizes = [(180, 240), (240, 144), (80, 60), (96, 96), (60, 200), (90, 40), (130, 110)]
  for i, (height, width) in enumerate(sizes):
    extension = "png" if i in (3, 6) else "jpg"
    write_image(os.path.join(root, "train", f"c{i % 2}", f"{i}.{extension}"),
                smooth_image(rng, height, width), **({"quality": 95} if extension == "jpg" else {}))
  write_image(os.path.join(root, "val", "c0", "v.jpg"), smooth_image(rng, 160, 120), quality=95)
  write_image(os.path.join(root, "val", "c1", "w.jpg"), smooth_image(rng, 50, 70), quality=95)
  return root


def _examples(source, split="train"):
  return [(bytes(ex["image"].numpy()), int(ex["label"])) for ex in source.read(split)]


def test_copy_bounds_the_longer_side_keeps_order_labels_and_small_images(mixed_folder, tmp_path):
  name = f"image_folder:{mixed_folder}"
  original = get_source(name, str(tmp_path))
  bounded = get_source(name, str(tmp_path), max_resolution=BOUND)
  assert bounded.split_names() == original.split_names()
  assert bounded.num_classes == original.num_classes
  for split in original.split_names():
    before, after = _examples(original, split), _examples(bounded, split)
    assert [label for _, label in before] == [label for _, label in after]  # same order
    for (old, _), (new, _) in zip(before, after):
      old_w, old_h = Image.open(io.BytesIO(old)).size
      new_image = Image.open(io.BytesIO(new))
      new_w, new_h = new_image.size
      if max(old_w, old_h) <= BOUND:
        assert new == old  # within the bound: the original bytes
        continue
      assert max(new_w, new_h) == BOUND and new_image.format == "JPEG"
      assert abs(new_w / new_h - old_w / old_h) < 2.5 / min(new_w, new_h)  # aspect kept
      # The pixels: the original scaled by an area filter, up to the filters' and
      # JPEG's error. Compared in luma: 4:2:0 chroma of these small, saturated
      # images alone costs ~3 per RGB value; a shifted, mirrored or transposed
      # image is off by tens.
      reference = Image.open(io.BytesIO(old)).convert("L").resize((new_w, new_h),
                                                                  Image.Resampling.BOX)
      error = np.abs(np.asarray(new_image.convert("L"), np.float32)
                     - np.asarray(reference, np.float32))
      assert error.mean() < 1.5, error.mean()


def test_training_reads_the_copy_and_resumes_exactly(mixed_folder, tmp_path):
  kwargs = dict(data_dir=str(tmp_path), global_batch_size=4, augment="inception", image_size=32,
                normalize="imagenet", process_index=0, process_count=1, seed=5,
                max_resolution=BOUND)
  name = f"image_folder:{mixed_folder}"
  stream = cnnjax.data.train_iterator(name, **kwargs)
  batches = [next(stream) for _ in range(3)]
  assert batches[0]["image"].shape == (4, 32, 32, 3)
  resumed = next(cnnjax.data.train_iterator(name, start_step=2, **kwargs))
  np.testing.assert_array_equal(resumed["image"], batches[2]["image"])
  np.testing.assert_array_equal(resumed["label"], batches[2]["label"])
  original = next(cnnjax.data.train_iterator(name, **dict(kwargs, max_resolution=0)))
  assert not np.array_equal(original["image"], batches[0]["image"])  # a different source


@pytest.mark.parametrize("bad", [-1, 8, 31, 100.0, True, "320"])
def test_bad_max_resolution_is_refused_with_the_range(mixed_folder, tmp_path, bad):
  with pytest.raises(DataError, match=r"max_resolution must be 0 .* >= 32"):
    get_source(f"image_folder:{mixed_folder}", str(tmp_path), max_resolution=bad)



def test_bad_images_keep_their_named_errors_with_a_bound(tmp_path):
  """A corrupt file stops preparation with the file's name before any copy is written;
  on_bad_image="skip" leaves it out of the copy too."""
  root = tmp_path / "folder"
  rng = np.random.default_rng(0)
  for i in range(4):
    write_image(str(root / "train" / f"c{i % 2}" / f"{i}.jpg"), smooth_image(rng, 120, 160))
  (root / "train" / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  name = f"image_folder:{root}"
  with pytest.raises(DataError, match="broken.jpg"):
    get_source(name, str(tmp_path / "data"), max_resolution=BOUND)
  assert not os.path.exists(tmp_path / "data" / "cnnjax_bounded")
  bounded = get_source(name, str(tmp_path / "data"), on_bad_image="skip", max_resolution=BOUND)
  assert bounded.num_examples("train") == 4 and bounded.skipped_images == 1


def _labels(source, split="train"):
  return [label for _, label in _examples(source, split)]


def test_an_image_moved_to_another_class_makes_a_new_copy(tmp_path, monkeypatch):
  """Same split sizes, one image in another class: the copy follows the folder, not the name."""
  rng = np.random.default_rng(4)
  root = tmp_path / "moving"
  for i in range(4):
    write_image(str(root / "train" / f"c{i % 2}" / f"{i}.jpg"), smooth_image(rng, 120, 150))
  name, data_dir = f"image_folder:{root}", str(tmp_path / "data")
  before = _labels(get_source(name, data_dir, max_resolution=BOUND))
  os.rename(root / "train" / "c0" / "0.jpg", root / "train" / "c1" / "0.jpg")
  monkeypatch.setattr(sources, "_SOURCES", {})  # as a new process sees it
  original = get_source(name, data_dir)
  bounded = get_source(name, data_dir, max_resolution=BOUND)
  assert _labels(bounded) == _labels(original) != before


def test_a_relative_name_means_the_folder_of_the_working_directory(tmp_path, monkeypatch):
  rng = np.random.default_rng(5)
  for place in ("a", "b"):
    for i in range(4):  # the same layout and sizes, other pixels
      write_image(str(tmp_path / place / "imgs" / "train" / f"c{i % 2}" / f"{i}.png"),
                  smooth_image(rng, 40, 50))
  data_dir = str(tmp_path / "data")
  monkeypatch.chdir(tmp_path / "a")
  from_a = _examples(get_source("image_folder:imgs", data_dir, max_resolution=BOUND))
  monkeypatch.chdir(tmp_path / "b")
  expected = _examples(get_source(f"image_folder:{tmp_path / 'b' / 'imgs'}", data_dir))
  assert expected != from_a
  assert _examples(get_source("image_folder:imgs", data_dir, max_resolution=BOUND)) == expected
  monkeypatch.setattr(sources, "_SOURCES", {})  # a new process in b
  assert _examples(get_source("image_folder:imgs", data_dir, max_resolution=BOUND)) == expected


def test_a_copy_whose_recorded_source_differs_is_named_stale(mixed_folder, tmp_path):
  name = f"image_folder:{mixed_folder}"
  original = get_source(name, str(tmp_path))
  builder = bounded_builder(original, BOUND)
  builder.download_and_prepare()
  changed = dict(original.identity, files=[["dataset_info.json", 1, 2]])
  builder.info.metadata["source_identity"] = changed
  with pytest.raises(DataError, match=r"stale: its source's files changed \(.*dataset_info.json"):
    check_bounded_source(builder, original)


_PREPARE = """
import os, sys, time
import cnnjax.data
from cnnjax.data import sources
from cnnjax.data.bounded import bounded_builder, check_bounded_source
from cnnjax.data.sources import get_source
ready, name, data_dir = sys.argv[1], sys.argv[2], sys.argv[3]
open(ready + str(os.getpid()), "w").close()
while len([f for f in os.listdir(os.path.dirname(ready)) if f.startswith("ready")]) < 2:
  time.sleep(0.01)
source = get_source(name, data_dir, max_resolution=96)
print(source.num_examples("train"), source.builder.data_dir)
"""


def test_two_processes_preparing_one_copy_both_succeed(mixed_folder, tmp_path):
  """Started together (a file barrier after the imports): one prepares, the other waits and
  reads the same copy; neither fails on the other's folder."""
  import subprocess
  import sys
  (tmp_path / "sync").mkdir()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  args = [sys.executable, "-c", _PREPARE, str(tmp_path / "sync" / "ready"),
          f"image_folder:{mixed_folder}", str(tmp_path / "data")]
  runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for _ in range(2)]
  results = [run.communicate(timeout=300) for run in runs]
  for run, (out, err) in zip(runs, results):
    assert run.returncode == 0, err[-2000:]
  last = [out.strip().splitlines()[-1] for out, _ in results]  # tfds prints its progress first
  assert last[0] == last[1] and last[0].split()[0] == "7"


def test_a_killed_preparation_leaves_nothing_behind(tmp_path):
  rng = np.random.default_rng(6)
  root = tmp_path / "folder"
  for i in range(2):
    write_image(str(root / f"c{i}" / f"{i}.jpg"), smooth_image(rng, 40, 40))
  data_dir = str(tmp_path / "data")
  from cnnjax.data.image_folder import image_folder_builder
  target = os.fspath(image_folder_builder(str(root), data_dir).data_dir)
  parent, version = os.path.split(target)
  stale = os.path.join(parent, f"incomplete.KILLED_{version}")
  os.makedirs(stale)
  open(os.path.join(stale, "half.tfrecord"), "w").close()
  get_source(f"image_folder:{root}", data_dir)
  assert not os.path.exists(stale) and os.path.isdir(target)
