"""Schedules, weight-decay masks, the plateau and error warm-up controls, losses and metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import optimizer_settings

from cnnjax.scoring import losses, metrics
from cnnjax.train import optim


def _lr(schedule, step):
  return float(schedule(jnp.int32(step)))


def _schedule(steps_per_epoch, total_steps, **settings):
  optimizer, schedule, _, batch_size = optimizer_settings(**settings)
  peak = optim.base_learning_rate(optimizer, batch_size)
  return optim.learning_rate_schedule(schedule, peak, steps_per_epoch, total_steps)


def test_multistep_cifar_schedule():
  schedule = _schedule(352, 64000, **{"schedule.name": "multistep",
                                      "schedule.multistep.boundaries_steps": (32000, 48000)})
  assert _lr(schedule, 0) == pytest.approx(0.1)
  assert _lr(schedule, 31999) == pytest.approx(0.1)
  assert _lr(schedule, 32000) == pytest.approx(0.01)
  assert _lr(schedule, 48000) == pytest.approx(0.001)


def test_googlenet_four_percent_every_eight_epochs():
  schedule = _schedule(100, 10_000, **{
      "schedule.name": "exponential", "optimizer.learning_rate": 0.01,
      "schedule.exponential.factor": 0.96, "schedule.exponential.every_epochs": 8.0})
  assert _lr(schedule, 799) == pytest.approx(0.01)
  assert _lr(schedule, 800) == pytest.approx(0.0096)
  assert _lr(schedule, 1600) == pytest.approx(0.01 * 0.96**2)


def test_warmup_cosine_and_linear_scaling():
  values = {"schedule.name": "warmup_cosine", "optimizer.learning_rate": 0.1,
            "run.batch_size": 1024, "optimizer.lr_scaling": "linear",
            "schedule.warmup_steps": 10}
  schedule = _schedule(10, 110, **values)
  optimizer, _, _, batch_size = optimizer_settings(**values)
  assert optim.base_learning_rate(optimizer, batch_size) == pytest.approx(0.4)  # 0.1 * 1024 / 256
  assert _lr(schedule, 0) == 0.0
  assert _lr(schedule, 5) == pytest.approx(0.2)
  assert _lr(schedule, 10) == pytest.approx(0.4)
  assert _lr(schedule, 60) == pytest.approx(0.2, rel=1e-5)
  assert _lr(schedule, 110) == pytest.approx(0.0, abs=1e-7)


def test_warmup_keeps_boundaries_absolute():
  schedule = _schedule(10, 40, **{"schedule.name": "multistep",
                                  "schedule.multistep.boundaries_steps": (20,),
                                  "schedule.warmup_steps": 10})
  assert _lr(schedule, 5) == pytest.approx(0.05)
  assert _lr(schedule, 19) == pytest.approx(0.1)
  assert _lr(schedule, 20) == pytest.approx(0.01)


def test_plateau_divides_by_ten_at_most_three_times():
  _, schedule, _, _ = optimizer_settings(**{
      "schedule.name": "plateau", "schedule.plateau.patience": 2,
      "schedule.plateau.max_reductions": 3})
  control = optim.LearningRateControl.from_settings(schedule)
  state = control.init()
  scales = []
  for error in [0.9, 0.8, 0.8, 0.8] + [0.8] * 10:
    state = control.after_validation(state, jnp.float32(error))
    scales.append(float(control.multiplier(state)))
  assert scales[:2] == [1.0, 1.0]
  assert scales[2] == 1.0 and scales[3] == pytest.approx(0.1)  # two evaluations without progress
  assert min(scales) == pytest.approx(1e-3, rel=1e-4)  # three reductions, no more


def test_error_threshold_warmup():
  _, schedule, _, _ = optimizer_settings(**{"schedule.error_warmup.factor": 0.1,
                                            "schedule.error_warmup.threshold": 0.8})
  control = optim.LearningRateControl.from_settings(schedule)
  state = control.init()
  assert float(control.multiplier(state)) == pytest.approx(0.1)
  state = control.after_train_batch(state, jnp.float32(0.85))
  assert float(control.multiplier(state)) == pytest.approx(0.1)
  state = control.after_train_batch(state, jnp.float32(0.79))
  state = control.after_train_batch(state, jnp.float32(0.95))  # stays switched
  assert float(control.multiplier(state)) == pytest.approx(1.0)


PARAMS = {
    "conv1": {"conv": {"kernel": np.ones((3, 3, 3, 4)), "bias": np.ones(4)},
              "bn": {"scale": np.ones(4), "bias": np.ones(4)}},
    "fc": {"kernel": np.ones((4, 2)), "bias": np.ones(2)},
}


@pytest.mark.parametrize("which,expected", [
    ("kernels", {"conv1/conv/kernel"}),
    ("kernels_and_biases", {"conv1/conv/kernel", "conv1/conv/bias", "fc/kernel", "fc/bias"}),
    ("all", {"conv1/conv/kernel", "conv1/conv/bias", "conv1/bn/scale", "conv1/bn/bias",
             "fc/kernel", "fc/bias"}),
    ("none", set()),
])
def test_weight_decay_masks(which, expected):
  if which == "kernels":
    expected = expected | {"fc/kernel"}
  mask = optim.weight_decay_mask(PARAMS, which)
  decayed = {"/".join(k.key for k in path) for path, leaf
             in jax.tree_util.tree_flatten_with_path(mask)[0] if leaf}
  assert decayed == expected


def test_sgd_update_matches_the_papers_rule():
  """v <- m v + (g + wd w); w <- w - lr v, with decay only on kernels."""
  optimizer, _, _, batch_size = optimizer_settings(**{
      "optimizer.learning_rate": 0.1, "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.01})
  tx = optim.create_optimizer(optimizer, batch_size)
  params = {"fc": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
  grads = {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -0.1 * (1 + 0.01 * 2), rtol=1e-6)
  np.testing.assert_allclose(updates["fc"]["bias"], -0.1, rtol=1e-6)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc"]["bias"], -0.1 * (1 + 0.9), rtol=1e-6)
  state = optim.set_learning_rate(state, 0.5)
  assert float(optim.current_learning_rate(state)) == 0.5
  optimizer, _, _, batch_size = optimizer_settings(**{"optimizer.nesterov": True,
                                                      "optimizer.weight_decay": 0.0})
  nesterov = optim.create_optimizer(optimizer, batch_size)
  updates, _ = nesterov.update(grads, nesterov.init(params), params)
  np.testing.assert_allclose(updates["fc"]["bias"], -0.1 * (1 + 0.9), rtol=1e-6)


def test_losses():
  labels = jnp.array([0, 2])
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]], jnp.bfloat16)
  ce = losses.classification_loss(logits, labels)
  assert ce.dtype == jnp.float32
  expected = -jax.nn.log_softmax(logits.astype(jnp.float32))[jnp.arange(2), labels]
  np.testing.assert_allclose(ce, expected, rtol=1e-6)
  smoothed = losses.classification_loss(logits, labels, label_smoothing=0.1)
  assert np.all(np.asarray(smoothed) > np.asarray(ce))
  mse = losses.mean_squared_error(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))
  assert float(mse[0]) == pytest.approx(0.5 * (1 + 4))  # E = 1/(2N) sum (y - yhat)^2, N = 1
  bce = losses.binary_cross_entropy(jnp.zeros((1, 3)), jnp.array([[1.0, 0.0, 0.0]]))
  assert float(bce[0]) == pytest.approx(3 * np.log(2), rel=1e-6)
  total, main = losses.total_training_loss(
      logits, labels, {"aux_logits": (logits, logits)}, loss="categorical_cross_entropy",
      label_smoothing=0.0, aux_loss_weight=0.3)
  assert float(total) == pytest.approx(float(main) * 1.6, rel=1e-6)


def test_topk_and_masked_sums():
  logits = jnp.array([[0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0],
                      [0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
  labels = jnp.array([2, 6, 0])
  np.testing.assert_array_equal(metrics.topk_wrong(logits, labels, 1), [1, 1, 1])
  np.testing.assert_array_equal(metrics.topk_wrong(logits, labels, 2), [0, 0, 0])
  np.testing.assert_array_equal(metrics.topk_wrong(logits[:, :2], jnp.array([0, 1, 1]), 1), [1, 1, 0])
  mask = jnp.array([True, True, False])  # the third example is padding
  sums = metrics.error_sums(logits, labels, jnp.array([1.0, 2.0, 100.0]), mask)
  assert {k: float(v) for k, v in sums.items()} == {
      "loss_sum": 3.0, "top1_wrong": 2.0, "top5_wrong": 0.0, "count": 2.0}
  total = metrics.add_sums(metrics.add_sums(None, sums), sums)
  averages = metrics.averages_from_sums(total)
  assert averages == {"loss": 1.5, "top1_error": 1.0, "top5_error": 0.0, "num_examples": 4}
  assert float(metrics.global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])})) == 5.0
