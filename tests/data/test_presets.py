"""Walks the preset declarations: every back end implements each op it claims, with the
declared options and defaults (cnnjax.preprocessing.presets)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from cnnjax.dali import plans
from cnnjax.data import augment, colour, geometry
from cnnjax.preprocessing import device, presets


def _signature_defaults(function) -> dict:
  return {name: p.default for name, p in inspect.signature(function).parameters.items()
          if p.default is not inspect.Parameter.empty}


def test_declarations_are_complete():
  for preset in presets.PRESETS.values():
    assert preset.ops, preset.name
    for op in preset.ops:
      assert op in presets.OPS, (preset.name, op)
      assert presets.OPS[op].device_from in (None, presets.UINT8, presets.CANVAS)
      for option in presets.OPS[op].options:
        assert option in presets.OPTIONS, (op, option)
  used = {o for op in presets.OPS.values() for o in op.options}
  assert used == set(presets.OPTIONS)  # no option without an op


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_tf_data_implements_every_op_with_the_declared_options(name):
  assert name in augment.PRESETS
  for op in presets.PRESETS[name].ops:
    assert op in augment.TF_OPS, (name, op)
  ops = augment.train_ops(name, image_size=32, native_size=None, normalize_op=colour.to_float())
  assert ops and all(callable(op) for op in ops)


def test_tf_data_defaults_are_the_declared_ones():
  declared = {name: option.default for name, option in presets.OPTIONS.items()}
  crop = _signature_defaults(geometry.inception_crop)
  assert crop == {k: declared[k] for k in ("area_range", "aspect_range", "max_attempts")}
  assert _signature_defaults(colour.color_distortion) == {
      k: declared[k] for k in presets.PHOTOMETRIC_STRENGTHS}
  assert _signature_defaults(colour.pca_lighting)["alpha_std"] == declared["pca_alpha_std"]
  assert geometry.INTERPOLATION_METHODS == declared["interpolations"]


def test_dali_supports_exactly_the_presets_whose_host_ops_it_implements():
  for name, preset in presets.PRESETS.items():
    host_ops = [op for op in preset.ops if not presets.OPS[op].on_device("dali")]
    implemented = all(op in plans.DALI_OPS for op in host_ops)
    assert (name in plans.PRESETS) == implemented, name
  assert set(plans.PRESETS) == {"alexnet", "scale_jitter", "inception"}  # no pad, no centre view


@pytest.mark.parametrize("name", list(plans.PRESETS))
def test_dali_takes_the_declared_options_and_defaults(name):
  for op in presets.PRESETS[name].ops:
    assert op in plans.DALI_OPS or op in device.DEVICE_OPS, (name, op)
  assert plans.make_preset(name, 224).options == presets.resolve(name, {}, 224)


def test_the_device_implements_every_device_op_with_the_declared_defaults():
  for preset in presets.PRESETS.values():
    for op in preset.ops:
      if presets.OPS[op].device_from is not None:
        assert op in device.DEVICE_OPS, (preset.name, op)
  alpha = {f.name: f.default for f in dataclasses.fields(device.PcaLighting)}["alpha_std"]
  assert alpha == presets.OPTIONS["pca_alpha_std"].default
  assert {f.name for f in dataclasses.fields(device.Photometric)} == set(presets.PHOTOMETRIC_STRENGTHS)
  assert colour.PHOTOMETRIC_DEFAULTS == {
      k: presets.OPTIONS[k].default for k in presets.PHOTOMETRIC_STRENGTHS}


def test_each_boundary_moves_the_declared_ops_to_the_device():
  inception = [presets.OPS[op] for op in presets.PRESETS["inception"].ops]
  assert [op.name for op in inception if op.on_device("uint8")] == [
      "photometric", "pca_lighting", "normalize"]
  assert [op.name for op in inception if op.on_device("canvas")] == [
      "random_resize", "flip", "photometric", "pca_lighting", "normalize"]
  assert not any(op.on_device("float32") for op in presets.OPS.values())


def test_options_resolve_relative_to_the_input_side():
  assert presets.resolve("alexnet", {}, 224)["resize_size"] == 256
  assert presets.resolve("scale_jitter", {}, 224)[("scale_min")] == 256
  assert presets.resolve("scale_jitter", {"scale_max": 300}, 224)["scale_max"] == 300
  assert presets.unknown_options("cifar", {"pad": 2, "hue": 0.1}) == ["hue"]


def test_every_default_passes_its_check():
  for name in presets.PRESETS:
    for size in (32, 224):
      assert presets.check_options(name, {}, size, error=ValueError) == presets.resolve(
          name, {}, size)


@pytest.mark.parametrize("given, message", [
    ({"area_range": (0.5, 0.2)},
     r"'inception': area_range must be \(min, max\) with 0.0 < min <= max <= 1.0, "
     r"got \(0.5, 0.2\)"),
    ({"area_range": (0.0, 1.0)}, "area_range must be"),
    ({"area_range": (0.1, 1.5)}, "area_range must be"),
    ({"aspect_range": (0.5,)}, "aspect_range must be"),
    ({"aspect_range": (-1.0, 2.0)}, "aspect_range must be"),
    ({"max_attempts": 0}, "max_attempts must be an integer >= 1, got 0"),
    ({"max_attempts": 2.5}, "max_attempts must be an integer"),
    ({"interpolations": ()}, "interpolations must be a non-empty sequence"),
    ({"interpolations": ("bilinear", "lanczos")}, "interpolations must be"),
    ({"interpolations": "bilinear"}, "interpolations must be"),
    ({"flip": "no"}, "flip must be True or False, got 'no'"),
    ({"photometric": 0}, "photometric must be True or False, got 0 \\(where the distortions"),
    ({"hue": -0.1}, "hue must be a number >= 0"),
])
def test_one_check_per_option_names_the_option_and_the_value(given, message):
  with pytest.raises(KeyError, match=message):  # raised with the caller's error class
    presets.check_options("inception", given, 224, error=KeyError)


def test_checks_against_the_input_side_and_between_options():
  def refused(name, given, size=224):
    with pytest.raises(ValueError) as info:
      presets.check_options(name, given, size, error=ValueError)
    return str(info.value)
  assert "scale_min <= scale_max" in refused("scale_jitter", {"scale_min": 512, "scale_max": 256})
  assert "smaller than the 224x224 crop" in refused("scale_jitter", {"scale_min": 200})
  assert "smaller than the 224x224 crop" in refused("alexnet", {"resize_size": 200})
  assert "pad must be an integer >= 0, got -1" in refused("cifar", {"pad": -1}, 32)
  assert "does not take ['hue']" in refused("cifar", {"hue": 0.1}, 32)
  assert "pca_color must be True, False or 'imagenet'" in refused("alexnet", {"pca_color": "yes"})
  assert "pca_alpha_std must be a number >= 0" in refused("alexnet", {"pca_alpha_std": "0.1"})
  assert "did you mean 'inception'" in refused("inceptoin", {})
  # image_size 0: a caller without an input side checks everything but the side
  assert presets.check_options("alexnet", {"resize_size": 8}, 0, error=ValueError)
  assert presets.check_options("scale_jitter", {"scale_min": 300}, 224,
                               error=ValueError)["scale_max"] == 512


def test_evaluation_views_are_built_from_their_declarations():
  from cnnjax.data import views
  assert views.VIEWS == tuple(presets.VIEWS)
  assert views._VIEW_KWARGS == {n: set(v.options) for n, v in presets.VIEWS.items()}  # pylint: disable=protected-access
  assert (views.DEFAULT_DENSE_SCALES, views.GOOGLENET_SCALES) == (presets.VGG_SCALES,
                                                                presets.GOOGLENET_SCALES)
  assert views.NATIVE_PAD == presets.OPTIONS["pad"].default
  assert views.CROP_FRACTION == presets.VIEWS["center"].defaults["crop_fraction"]
  for name in presets.VIEWS:  # every declared view builds
    views.eval_op(name, image_size=32, native_size=None, normalize_op=colour.to_float(),
                  **({"scales": (40,)} if name in ("dense_multiscale", "144crop", "150crop") else {}))


def test_the_device_runs_the_declared_device_ops_in_the_declared_order():
  import jax
  import numpy as np
  photometric = device.Photometric(brightness=32.0, contrast=0.5, saturation=0.5, hue=0.2)
  pca = device.PcaLighting((20.0, 10.0, 5.0), ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), 0.5)
  images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
  rng, step = jax.random.PRNGKey(3), 5

  def by_hand(order):
    x = images.astype(np.float32)
    for op in order:
      key = device._stream_key(rng, device._PCA_STREAM if op == "pca_lighting"  # pylint: disable=protected-access
                               else device._PHOTOMETRIC_STREAM, step)  # pylint: disable=protected-access
      x = (pca if op == "pca_lighting" else photometric)(x, key)
    return np.asarray(x) - 100.0

  for order in (("photometric", "pca_lighting"), ("pca_lighting", "photometric")):
    finish = device.DeviceInput(mean=(100.0, 100.0, 100.0), photometric=photometric, pca=pca,
                                ops=order + ("normalize",))
    np.testing.assert_allclose(finish.train(images, rng, step), by_hand(order), atol=1e-3)
  assert device.DeviceInput().ops == device.ALL_DEVICE_OPS
  with pytest.raises(ValueError, match="no op 'pad'"):
    device.DeviceInput(ops=("pad",))


@pytest.mark.parametrize("boundary", ["uint8", "canvas"])
def test_device_input_takes_the_presets_device_ops_in_order(digits_dir, boundary):
  from cnnjax import data
  finish = data.device_input("digits", augment="inception", data_dir=digits_dir, image_size=16,
                             normalize="imagenet", boundary=boundary)
  assert finish.ops == tuple(op for op in presets.PRESETS["inception"].ops
                             if presets.OPS[op].on_device(boundary))
  assert (finish.resize == 16) == (boundary == "canvas")
