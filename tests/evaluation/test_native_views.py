"""Multi-crop views of images already at the network's size help, or at least do not hurt.

VGG (Table 5) and ResNet (Section 4.2 / Table 3) report multi-crop at least as
good as one centre crop. On 32x32 images the crops come from the training
geometry (the CIFAR recipe's 4-pixel zero padding, corners and centre, and
flips) instead of a rescale to 37 pixels, which showed the network digits
larger than it had seen them.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "train"))


def test_multi_crop_views_of_native_size_digits_do_not_hurt(digits_dir, tmp_path):
  from train_helpers import make_tiny_config

  from cnnjax import evaluate
  from cnnjax.train import run
  # The CIFAR recipe (pad 4, random 32 crop, flips) at the digits' own 32x32 size, 200 steps.
  config = make_tiny_config(digits_dir, **{
      "input.image_size": 32, "run.num_steps": 200, "run.batch_size": 32,
      "optimizer.learning_rate": 0.1, "schedule.name": "warmup_cosine",
      "schedule.warmup_steps": 20, "optimizer.nesterov": True, "input.augment": "cifar",
      # BN scales 1 (residual_scale_init=1.0): the initialisation this run was sized
      # with (centre error 13%); the CIFAR default, 1/sqrt(blocks), gave 18% in these
      # 200 steps, where a 3-digit difference between views decides the test.
      "model.kwargs": {"stage_sizes": (1, 1, 1), "width_multiplier": 0.5,
                       "residual_scale_init": 1.0}})
  run(config, str(tmp_path))
  member = evaluate.load_member(str(tmp_path))
  errors = {view: evaluate.evaluate([member], "digits", view=view, progress=False)
            for view in ("center", "10crop", "144crop", "dense_multiscale")}
  center = errors["center"]["top1_error"]
  assert errors["center"]["num_examples"] == 300
  assert center < 0.3, f"the run should have learned the digits; centre error {center:.3f}"
  # The bug this guards against (crops of digits rescaled to 37 pixels) cost 8 points of
  # top-1 (0.67% -> 8.67% on the quickstart). A 200-step net's views differ by a few points
  # of noise either way (10crop +3.3, dense +0.7 points with jax 0.10.2; -1 before), so 4
  # points of slack.
  for view in ("10crop", "144crop"):
    assert errors[view]["top1_error"] <= center + 0.04, (view, errors[view], center)
  # Dense evaluation keeps the images' own size: one scale, 32, no upsampling.
  assert errors["dense_multiscale"]["scales"] == [32]
  assert errors["dense_multiscale"]["top1_error"] <= center + 0.04, (errors["dense_multiscale"],
                                                                     center)


def test_views_follow_a_run_trained_without_padding_or_flips(digits_dir):
  """The quickstart trains on the plain digits (augment "none"): no shifted or mirrored views."""
  import jax
  import jax.numpy as jnp

  from cnnjax import evaluate, models
  from cnnjax.configs import quickstart
  assert evaluate.ensemble.train_geometry(quickstart.get_config().to_dict()["input"]) == {
      "pad": 0, "flip": False}
  assert evaluate.ensemble.train_geometry(
      {"augment": "cifar", "augment_kwargs": {}}) == {"pad": 4, "flip": True}
  model = models.create("cifar_resnet20", num_classes=10, stage_sizes=(1, 1, 1),
                        width_multiplier=0.25)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  config = {"input": {"dataset": "digits", "data_dir": digits_dir, "image_size": 32,
                      "normalize": "per_channel", "augment": "none"},
            "model": {"name": "cifar_resnet20"}}
  member = evaluate.Member(model=model, variables=variables, config=config)
  reports = {view: evaluate.evaluate([member], "digits", view=view, progress=False)
             for view in ("center", "10crop", "dense_multiscale")}
  for view in ("10crop", "dense_multiscale"):
    assert reports[view]["top1_error"] == reports["center"]["top1_error"]
    assert abs(reports[view]["loss"] - reports["center"]["loss"]) < 1e-4
