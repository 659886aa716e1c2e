"""Evaluation: view averaging, masks, ensembles and the command, against hand computations."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from eval_helpers import mean_colour_member, numpy_errors, numpy_probs, random_variables

from cnnjax import evaluate as ev
from cnnjax import models
from cnnjax.errors import ConfigError, DataError, ModelError


def hand_batches(view_count: int | None, *, seed: int = 0, batch: int = 8, num_batches: int = 3,
                 padding: int = 5, size: int = 6):
  """Batches like eval_iterator's: the last one padded with masked junk rows.

  Padded rows get images and labels that a model would classify wrongly, so
  counting them would change the errors.
  """
  rng = np.random.default_rng(seed)
  shape = (batch,) + ((view_count,) if view_count else ()) + (size, size, 3)
  batches = []
  for index in range(num_batches):
    images = rng.normal(scale=40.0, size=shape).astype(np.float32)
    labels = rng.integers(0, 7, size=batch).astype(np.int32)
    mask = np.ones(batch, bool)
    if index == num_batches - 1:
      mask[batch - padding:] = False
      images[batch - padding:] = 1e3
      labels[batch - padding:] = 0
    batches.append({"image": images, "label": labels, "mask": mask})
  return batches


def reference(members, batches, view_count):
  """Numpy: softmax per image, mean over views, mean over models, errors over the mask."""
  probs = []
  for batch in batches:
    images = batch["image"] if view_count else batch["image"][:, None]
    per_model = [numpy_probs(variables, images).mean(axis=1) for _, variables in members]
    probs.append(np.mean(per_model, axis=0))
  labels = np.concatenate([b["label"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  return numpy_errors(np.concatenate(probs), labels, mask), int(mask.sum())


@pytest.mark.parametrize("view,view_count", [("center", None), ("10crop", 10)])
def test_views_match_a_hand_computed_reference(view, view_count):
  members = [mean_colour_member(1)]
  batches = hand_batches(view_count)
  report = ev.evaluate(members, batches, view=view, progress=False)
  (top1, top5), count = reference(members, batches, view_count)
  assert report["num_examples"] == count == 19
  # Errors are counts over 19 examples: equal as fractions, exactly.
  assert round(report["top1_error"] * count) == round(top1 * count)
  assert round(report["top5_error"] * count) == round(top5 * count)
  assert report["top1_error"] == pytest.approx(top1, abs=1e-9)
  assert report["top5_error"] == pytest.approx(top5, abs=1e-9)
  assert 0 < report["top1_error"] < 1  # the check has something to count


def test_ten_crop_averages_softmax_not_logits():
  member = mean_colour_member(2)
  batch = hand_batches(10, batch=4, num_batches=1, padding=0)[0]
  got = np.asarray(ev.predict_views(*member, batch, "10crop"))
  want = numpy_probs(member[1], batch["image"]).mean(axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  logits_mean_softmax = numpy_probs(member[1], batch["image"].mean(axis=1, keepdims=True))[:, 0]
  assert np.abs(logits_mean_softmax - want).max() > 1e-4  # the two really differ here


def test_ensemble_matches_reference_and_reports_members():
  members = [mean_colour_member(3), mean_colour_member(4)]
  batches = hand_batches(10, seed=5)
  report = ev.evaluate(members, batches, view="10crop", progress=False)
  (top1, top5), count = reference(members, batches, 10)
  assert report["top1_error"] == pytest.approx(top1, abs=1e-9)
  assert report["top5_error"] == pytest.approx(top5, abs=1e-9)
  assert report["num_models"] == 2 and len(report["members"]) == 2
  for member, row in zip(members, report["members"]):
    (member_top1, _), _ = reference([member], batches, 10)
    assert row["top1_error"] == pytest.approx(member_top1, abs=1e-9)
    assert row["num_examples"] == count


def test_ensemble_of_two_identical_models_equals_one():
  member = mean_colour_member(6)
  batches = hand_batches(None, seed=7)
  one = ev.evaluate([member], batches, view="center", progress=False)
  two = ev.evaluate([member, member], batches, view="center", progress=False)
  for key in ("top1_error", "top5_error", "num_examples"):
    assert one[key] == two[key]
  assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)


def numpy_softmax(logits):
  logits = np.asarray(logits, np.float64)
  exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def test_dense_vgg_averages_the_class_score_map_then_softmax():
  """VGG's dense evaluation with the same parameters as the FC network.

  At Q=224 the 7x7 fc6 convolution sees exactly the FC network's input (a
  1x1 score map), so dense equals the plain network. At Q=256 the map is 2x2;
  the reference averages fc8 applied to the four fc7 positions, then takes
  the softmax, then the mean with the mirror image, and then over scales.
  (Multi-crop is not a reference: crops see zero padding at their borders.)
  """
  model = models.create("vgg_a", num_classes=5, width_multiplier=1 / 16)
  rng = np.random.default_rng(8)
  variables = random_variables(model, (224, 224, 3))
  dense_model = ev.model_for_view(model, "dense_multiscale")
  assert dense_model.fully_convolutional and not model.fully_convolutional

  def pair(size):
    image = rng.normal(scale=50.0, size=(size, size, 3)).astype(np.float32)
    return np.stack([image, image[:, ::-1]])[None]  # [1, 2, size, size, 3]

  batch = {"image_q224": pair(224), "image_q256": pair(256)}
  predict = jax.jit(lambda v, b: ev.predict_views(dense_model, v, b, "dense_multiscale"))
  got = np.asarray(predict(variables, batch))[0]

  plain = np.asarray(jax.jit(model.apply)(variables, batch["image_q224"][0]))
  at_224 = numpy_softmax(plain).mean(axis=0)
  _, feats = jax.jit(lambda v, x: dense_model.apply(v, x, features=True))(
      variables, batch["image_q256"][0])
  fc7_map = np.asarray(feats["fc7"], np.float64)
  assert fc7_map.shape[1:3] == (2, 2)
  fc8 = variables["params"]["fc8"]
  score_map = fc7_map @ np.asarray(fc8["kernel"], np.float64) + np.asarray(fc8["bias"])
  at_256 = numpy_softmax(score_map.mean(axis=(1, 2))).mean(axis=0)
  np.testing.assert_allclose(got, (at_224 + at_256) / 2, rtol=1e-4, atol=1e-6)


def test_dense_scales_follow_the_papers():
  vgg = models.create("vgg_d")
  resnet = models.create("resnet50")
  assert ev.dense_scales(vgg, {"augment": "scale_jitter",
                               "augment_kwargs": {"scale_min": 256, "scale_max": 256}}) == (
                                   224, 256, 288)
  assert ev.dense_scales(vgg, {"augment": "scale_jitter",
                               "augment_kwargs": {"scale_min": 256, "scale_max": 512}}) == (
                                   256, 384, 512)
  assert ev.dense_scales(resnet, {}) == (224, 256, 384, 480, 640)
  assert ev.dense_scales(resnet, {"image_size": 112}) == (112, 128, 192, 240, 320)


@pytest.mark.parametrize("name", ["googlenet", "alexnet"])
def test_dense_view_on_a_network_that_cannot_take_it_is_refused(name):
  model = models.create(name)
  with pytest.raises(ModelError, match="dense_multiscale.*fully convolutional"):
    ev.model_for_view(model, "dense_multiscale")
  with pytest.raises(ModelError, match="fully convolutional"):
    ev.evaluate([(model, {})], [], view="dense_multiscale", progress=False)


def test_ensemble_of_different_class_counts_is_refused():
  with pytest.raises(ModelError, match=r"different numbers of classes.*7.*10"):
    ev.evaluate([mean_colour_member(1), mean_colour_member(2, num_classes=10)],
                hand_batches(None), progress=False)


def test_other_bad_inputs_are_named():
  member = mean_colour_member(1)
  with pytest.raises(ConfigError, match="unknown view"):
    ev.evaluate([member], hand_batches(None), view="12crop", progress=False)
  with pytest.raises(DataError, match="mask"):
    batches = [{k: v for k, v in b.items() if k != "mask"} for b in hand_batches(None)]
    ev.evaluate([member], batches, progress=False)
  with pytest.raises(DataError, match=r"\[B, views, H, W, 3\]"):
    ev.evaluate([member], hand_batches(None), view="10crop", progress=False)
  with pytest.raises(ModelError, match="at least one"):
    ev.evaluate([], hand_batches(None), progress=False)
  with pytest.raises(ModelError, match="Member"):
    ev.evaluate(["workdirs/x"], hand_batches(None), progress=False)


# --------------------------------------------- a checkpoint trained by the quickstart


def test_command_evaluates_a_quickstart_checkpoint(trained_workdir, tmp_path, capsys):
  output = tmp_path / "report.json"
  code = ev.main(["--workdir", trained_workdir, "--views", "10crop", "--output", str(output),
                  "--no_progress"])
  assert code == 0
  report = json.loads(output.read_text())
  assert report["view"] == "10crop" and report["dataset"] == "digits"
  assert report["split"] == "test"
  assert report["num_examples"] == 300  # the digits test split, every example once
  assert 0.0 <= report["top5_error"] <= report["top1_error"] <= 1.0
  assert report["members"][0]["name"].endswith("(EMA)")
  printed = capsys.readouterr().out
  assert "top-1 err" in printed and "10crop" in printed


def test_ensemble_of_two_identical_checkpoints_equals_one(trained_workdir):
  member = ev.load_member(trained_workdir)
  one = ev.evaluate([member], "digits", view="center", progress=False)
  two = ev.evaluate([member, ev.load_member(trained_workdir)], "digits", view="center",
                    progress=False)
  assert one["num_examples"] == two["num_examples"] == 300
  assert one["top1_error"] == two["top1_error"]
  assert one["top5_error"] == two["top5_error"]
  assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)


def test_ema_weights_are_used_when_the_run_kept_them(trained_workdir):
  from cnnjax.train import checkpoint
  ema_member = ev.load_member(trained_workdir)
  plain_member = ev.load_member(trained_workdir, use_ema=False)
  ema, _ = checkpoint.restore_variables(trained_workdir, use_ema=True)
  jax.tree.map(np.testing.assert_array_equal, ema_member.variables["params"], ema["params"])
  differs = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         ema_member.variables["params"],
                                         plain_member.variables["params"]))
  assert any(differs)


def test_dense_multiscale_runs_on_the_quickstart_resnet(trained_workdir):
  report = ev.evaluate([ev.load_member(trained_workdir)], "digits", view="dense_multiscale",
                       scales=(16, 24), progress=False)
  assert report["scales"] == [16, 24] and report["num_examples"] == 300


def test_command_reports_named_errors(trained_workdir, tmp_path, capsys):
  assert ev.main(["--workdir", str(tmp_path), "--no_progress"]) == 2
  assert "config.json" in capsys.readouterr().err
  assert ev.main(["--workdir", trained_workdir, "--views", "dense_multiscale",
                  "--scales", "16,x", "--no_progress"]) == 2
  assert "--scales" in capsys.readouterr().err
