"""The pure train/eval steps on a tiny module: learning, guards, masks, EMA, mixed precision."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from train_helpers import TinyNet, random_batch, tiny_state

from cnnjax import sharding
from cnnjax.train import steps


def _host(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def test_train_step_learns_and_reports_norms():
  state, mesh = tiny_state(ema_decay=0.5)
  batch = sharding.global_batch(random_batch(), mesh)
  losses = []
  for _ in range(12):
    state, metrics = steps.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.1
  assert int(state.step) == 12 and int(metrics["nonfinite"]) == 0
  for key in ("grad_norm", "param_norm", "update_norm", "learning_rate", "top1_error", "top5_error"):
    assert np.isfinite(float(metrics[key]))
  assert float(metrics["learning_rate"]) == np.float32(0.1)
  # The EMA trails the parameters.
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                state.params, state.ema_params)
  assert max(jax.tree_util.tree_leaves(diff)) > 0


def test_dropout_key_depends_on_step_only():
  state, mesh = tiny_state()
  batch = sharding.global_batch(random_batch(), mesh)
  twin, _ = tiny_state()
  a, _ = steps.train_step(state, batch)
  b, _ = steps.train_step(twin, batch)
  for x, y in zip(jax.tree_util.tree_leaves(_host(a.arrays())), jax.tree_util.tree_leaves(_host(b.arrays()))):
    np.testing.assert_array_equal(x, y)


def test_nonfinite_step_leaves_the_state_untouched():
  state, mesh = tiny_state()
  before = _host(state.arrays())
  bad = random_batch()
  bad["image"][3, 0, 0, 0] = np.nan
  new_state, metrics = steps.train_step(state, sharding.global_batch(bad, mesh))
  host = {k: float(v) for k, v in metrics.items()}
  # XLA may turn the NaN into a finite loss through BatchNorm's clamps; the
  # gradient is NaN either way, and the guard must catch one of the two.
  assert host["nonfinite"] in (1, 2)
  assert steps.describe_nonfinite(new_state, host).startswith(("loss", "gradient of params/"))
  for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(_host(new_state.arrays()))):
    np.testing.assert_array_equal(x, y)
  # How a bad gradient / statistic is named (index into tree_leaves order).
  names = [steps.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(new_state.params)[0]]
  where = steps.describe_nonfinite(new_state, {"nonfinite": 2, "nonfinite_leaf": names.index("Dense_0/kernel")})
  assert where == "gradient of params/Dense_0/kernel"
  where = steps.describe_nonfinite(new_state, {"nonfinite": 3, "nonfinite_leaf": 1})
  assert where == "BatchNorm statistic of batch_stats/BatchNorm_0/var"


def test_eval_step_counts_only_real_examples_and_averages_views():
  state, mesh = tiny_state()
  batch = random_batch(batch_size=8)
  full = steps.eval_step(state, sharding.global_batch(batch, mesh))
  padded = dict(batch, image=batch["image"].copy(), mask=np.array([True] * 5 + [False] * 3))
  padded["image"][5:] = 0.0
  part = steps.eval_step(state, sharding.global_batch(padded, mesh))
  assert float(full["count"]) == 8 and float(part["count"]) == 5
  logits = np.asarray(state.apply_fn(state.variables(), batch["image"]))
  loss = -jax.nn.log_softmax(logits)[np.arange(8), batch["label"]]
  np.testing.assert_allclose(float(part["loss_sum"]), loss[:5].sum(), rtol=1e-5)
  # Ten identical views score as one view.
  views = dict(batch, image=np.repeat(batch["image"][:, None], 10, axis=1))
  multi = steps.eval_step(state, sharding.global_batch(views, mesh))
  np.testing.assert_allclose(float(multi["loss_sum"]), float(full["loss_sum"]), rtol=1e-5)
  assert float(multi["top1_wrong"]) == float(full["top1_wrong"])


def test_bfloat16_compute_keeps_float32_state():
  state, mesh = tiny_state(model=TinyNet(dtype=jnp.bfloat16))
  state, metrics = steps.train_step(state, sharding.global_batch(random_batch(), mesh))
  assert np.isfinite(float(metrics["loss"]))
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(
      (state.params, state.batch_stats, state.opt_state))}
  assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}


def test_plateau_update_through_the_state():
  state, _ = tiny_state(schedule="plateau", plateau_patience=1)
  state = steps.after_validation(state, jnp.float32(0.5))
  state = steps.after_validation(state, jnp.float32(0.6))
  assert float(state.rules.lr_control.multiplier(state.lr_control)) == np.float32(0.1)


def test_batch_of_one_example():
  state, mesh = tiny_state(batch_size=1)
  state, metrics = steps.train_step(state, sharding.global_batch(random_batch(batch_size=1), mesh))
  assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
  sums = steps.eval_step(state, sharding.global_batch(random_batch(batch_size=1), mesh))
  assert float(sums["count"]) == 1


def test_batchnorm_group_resolution():
  from cnnjax.train import setup
  # config.model.bn_group_size, the global batch, the devices
  assert setup.bn_group_size(0, 256, num_devices=8) == 32  # the papers' per-GPU statistics
  assert setup.bn_group_size(-1, 256, num_devices=8) is None
  assert setup.bn_group_size(16, 256, num_devices=8) == 16
  assert setup.bn_group_size(0, 1, num_devices=1) == 1
