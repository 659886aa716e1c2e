"""Promise 3: a NaN or Inf stops training, names the step and the first bad quantity,
and leaves the last good checkpoint intact and loadable.

The train step is checked quantity by quantity with a probe network whose
loss, gradient or BatchNorm statistic can be made non-finite on its own; the
loop is checked end to end with a batch of NaN pixels at a known step (the
cheap stand-in for a huge learning rate: the same compiled program, and an
exactly known step).
"""

from __future__ import annotations

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reliability_helpers import KILL_RUN, committed_steps, leaves

from cnnjax.errors import NonFiniteError
from cnnjax.train import checkpoint, workdir_lock
from cnnjax.train import checkpoint_integrity as integrity
from cnnjax import sharding
from cnnjax.train import config as config_lib
from cnnjax.train import optim, run, setup, steps
from cnnjax.train.writer import read_metrics


class Probe(nn.Module):
  """Conv -> BatchNorm -> mean -> Dense, plus two traps that leave the loss finite.

  Armed by parameter values, so that one compiled step serves every case:
  grad_trap = 0: adds 0 * sqrt(|grad_trap|) to the logits, a finite forward
    pass and a NaN gradient (0 * inf) for grad_trap (harmless at 1).
  stats_scale = 1e30: a second BatchNorm, whose output is not used, sees
    the activations times stats_scale: its running variance overflows while
    the loss and the gradients stay finite.
  """

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    h = nn.Conv(4, (3, 3))(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    pooled = nn.relu(h).mean(axis=(1, 2))
    grad_trap = self.param("grad_trap", nn.initializers.ones, ())
    stats_scale = self.param("stats_scale", nn.initializers.ones, ())
    logits = nn.Dense(10)(pooled) + 0.0 * jnp.sqrt(jnp.abs(grad_trap))
    nn.BatchNorm(use_running_average=not train, momentum=0.9, name="overflowing")(h * stats_scale)
    return (logits, {"pre_logits": pooled}) if features else logits


@pytest.fixture(scope="module")
def probe():
  """(initial state, the train step jitted once for all cases)."""
  # The defaults of config.optimizer, config.schedule and config.loss: SGD at lr 0.1.
  settings = config_lib.Settings()
  tx = optim.create_optimizer(settings.optimizer, batch_size=8)
  rules = setup.step_rules(settings.optimizer, settings.schedule, settings.loss, batch_size=8,
                           steps_per_epoch=10, total_steps=100)
  init = setup.state_initializer(Probe(), tx, rules, (8, 8, 3))
  return setup.create_state(init, sharding.make_mesh(), 0), jax.jit(steps.train_step_fn)


def _batch(poison_images: bool = False):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
  if poison_images:
    images[3, 2, 2, 1] = np.nan
  return {"image": images, "label": rng.integers(0, 10, 8).astype(np.int32)}


def _armed(state, **values):
  """`state` with trap parameters set (placed like the originals: no recompilation)."""
  params = dict(state.params)
  for name, value in values.items():
    params[name] = jax.device_put(np.float32(value), params[name].sharding)
  return state.replace(params=params)


@pytest.mark.parametrize("trap, poison, expected", [
    ({}, True, "loss"),
    ({"grad_trap": 0.0}, False, "gradient of params/grad_trap"),
    ({"stats_scale": 1e30}, False, "BatchNorm statistic of batch_stats/overflowing/"),
])
def test_train_step_names_the_first_nonfinite_quantity_and_applies_nothing(
    probe, trap, poison, expected):
  state, step_fn = probe
  state = _armed(state, **trap)
  before = leaves(state.arrays())
  new_state, metrics = step_fn(state, _batch(poison))
  host = {k: np.asarray(v) for k, v in metrics.items()}
  assert int(host["nonfinite"]) != 0
  described = steps.describe_nonfinite(new_state, host)
  assert described.startswith(expected), described
  if trap:
    assert np.isfinite(host["loss"]), "the trap should leave the loss finite"
  for a, b in zip(before, leaves(new_state.arrays())):
    np.testing.assert_array_equal(a, b)  # the step was not applied, not even its counter


def test_finite_step_is_reported_finite(probe):
  state, step_fn = probe
  _, metrics = step_fn(state, _batch())
  assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))


POISONED_STEP = 5  # the 5th batch carries a NaN pixel


def test_loop_stops_at_the_poisoned_step_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  import cnnjax.data
  real_iterator = cnnjax.data.train_iterator

  def poisoned_iterator(*args, start_step=0, **kwargs):
    for step, batch in enumerate(real_iterator(*args, start_step=start_step, **kwargs),
                                 start=start_step + 1):
      if step == POISONED_STEP:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(cnnjax.data, "train_iterator", poisoned_iterator)
  workdir = str(tmp_path / "poisoned")
  config = tiny_config(**dict(KILL_RUN, num_steps=8))
  with pytest.raises(NonFiniteError) as info:
    run(config, workdir)
  message = str(info.value)
  # Which quantity turns first depends on the backend: XLA's CPU max() lets
  # ReLU swallow NaN activations, so the loss can stay finite while the
  # gradient does not. The step and the quantity must be named either way.
  assert re.match(rf"step {POISONED_STEP}: the (loss|gradient of params/\S+|BatchNorm "
                  r"statistic of batch_stats/\S+) is NaN/Inf", message), message
  # Saved before the bad step: every checkpoint step, and the validation step 4 as
  # the best so far; the newest of them is the last good one.
  saves = [s for s in range(1, POISONED_STEP) if s % KILL_RUN["checkpoint.every_steps"] == 0
           or s % KILL_RUN["eval.every_steps"] == 0]
  last_good = max(saves)
  assert f"last good checkpoint is step {last_good}" in message, message

  directory = os.path.join(workdir, checkpoint.LATEST_DIR)
  assert committed_steps(directory) == saves
  assert integrity.find_problem(os.path.join(directory, str(last_good))) is None
  variables, meta = checkpoint.restore_variables(workdir)
  assert meta["step"] == last_good
  assert all(np.isfinite(x).all() for x in leaves(variables))
  for row in read_metrics(workdir):
    assert row["step"] < POISONED_STEP, row  # nothing of the bad step was logged
    assert all(np.isfinite(v) for v in row.values() if isinstance(v, float)), row
  assert workdir_lock.read_owner(workdir) is None  # the lock was released

  # The run resumes from the good checkpoint once the input is fixed.
  monkeypatch.setattr(cnnjax.data, "train_iterator", real_iterator)
  summary = run(config, workdir, stop_after_steps=1)
  assert summary["step"] == last_good + 1
