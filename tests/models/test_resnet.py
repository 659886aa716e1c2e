"""ResNet options, scanned stages and the conversion between variable layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.models as models


def shapes_of(model, size=32):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def test_v1_puts_the_stride_on_the_first_1x1_and_v1_5_on_the_3x3():
  def output_sizes(version):
    rows = models.profile("resnet50", version=version, width_multiplier=1 / 8).rows
    return {row.path: row.output_shape[0] for row in rows
            if row.path.startswith("stage2/block1/") and row.path.endswith("/conv")}
  assert output_sizes("1") == {"stage2/block1/conv1/conv": 28, "stage2/block1/conv2/conv": 28,
                               "stage2/block1/conv3/conv": 28, "stage2/block1/shortcut/conv": 28}
  assert output_sizes("1.5")["stage2/block1/conv1/conv"] == 56
  assert output_sizes("1.5")["stage2/block1/conv2/conv"] == 28


@pytest.mark.parametrize("shortcut, projections", [("A", 0), ("B", 4), ("C", 16), ("none", 0)])
def test_shortcut_options(shortcut, projections):
  params = shapes_of(models.create("resnet50", shortcut=shortcut, width_multiplier=1 / 8))
  blocks = [block for stage in params["params"].values() if isinstance(stage, dict)
            for name, block in stage.items() if name.startswith("block")]
  assert len(blocks) == 16
  assert sum("shortcut" in block for block in blocks) == projections


def test_shortcut_projection_leaves():
  params = shapes_of(models.create("resnet18"))["params"]
  assert set(params["stage2"]["block1"]["shortcut"]) == {"conv", "bn"}
  assert "shortcut" not in params["stage1"]["block1"]
  assert "shortcut" not in params["stage2"]["block2"]


def test_option_a_pads_channels_and_subsamples():
  from cnnjax.models.resnet import zero_padded_identity
  x = jnp.arange(2 * 4 * 4 * 3.0).reshape(2, 4, 4, 3)
  y = zero_padded_identity(x, 2, 5)
  assert y.shape == (2, 2, 2, 5)
  np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2])
  np.testing.assert_array_equal(y[..., 3:], 0)


def test_residual_scale_init_zero_zeroes_the_last_bn_scale(fast_compile):
  model = models.create("cifar_resnet20", residual_scale_init=0.0, width_multiplier=0.25,
                        stage_sizes=(2, 1))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)

  def init_and_apply(key, x):
    variables = model.init(key, x)
    return variables, model.apply(variables, x, features=True)[1]

  key = jax.random.key(0)
  variables, feats = fast_compile(init_and_apply, key, x)(key, x)
  block = variables["params"]["stage1"]["block1"]
  np.testing.assert_array_equal(block["conv2"]["bn"]["scale"], 0)
  np.testing.assert_array_equal(block["conv1"]["bn"]["scale"], 1)
  # With zero-initialised branches every block starts as the identity (stem output is >= 0).
  np.testing.assert_allclose(feats["stage1"], feats["stem"], rtol=1e-6)
  assert "stage3" not in feats  # stage_sizes is an override like any other


def test_scanned_and_unscanned_resnets_agree(make_variables, fast_compile):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
  common = {"width_multiplier": 1 / 4, "num_classes": 7}
  plain = models.create("cifar_resnet32", **common)
  scanned = models.create("cifar_resnet32", scan_blocks=True, remat=True, **common)
  scanned_vars = make_variables(scanned, x, seed=3)
  # Give the running averages distinct values so the conversion is really tested.
  scanned_vars["batch_stats"] = jax.tree.map(
      lambda v: v + 0.1 * jnp.arange(v.size, dtype=v.dtype).reshape(v.shape) / v.size,
      scanned_vars["batch_stats"])
  plain_vars = models.to_unscanned_variables(scanned_vars)
  assert jax.tree.structure(plain_vars) == jax.tree.structure(make_variables(plain, x))
  back = models.to_scanned_variables(plain_vars)
  jax.tree.map(np.testing.assert_array_equal, back, scanned_vars)
  assert set(scanned_vars["params"]["stage3"]) == {"block1", "blocks"}
  assert scanned_vars["params"]["stage3"]["blocks"]["conv1"]["conv"]["kernel"].shape[0] == 4
  assert scanned_vars["batch_stats"]["stage2"]["blocks"]["conv2"]["bn"]["mean"].shape[0] == 4

  def both(scanned_vars, plain_vars, x):
    outputs = {}
    for key, model, variables in (("scanned", scanned, scanned_vars),
                                  ("plain", plain, plain_vars)):
      eval_logits = model.apply(variables, x)
      (train_logits, feats), state = model.apply(variables, x, train=True, features=True,
                                                 mutable=["batch_stats"])
      outputs[key] = (eval_logits, train_logits, feats["stage3"], state)
    return outputs

  outputs = fast_compile(both, scanned_vars, plain_vars, x)(scanned_vars, plain_vars, x)
  s_eval, s_train, s_feat, s_state = outputs["scanned"]
  p_eval, p_train, p_feat, p_state = outputs["plain"]
  np.testing.assert_allclose(s_eval, p_eval, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(s_train, p_train, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s_feat, p_feat, rtol=1e-4, atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               models.to_unscanned_variables(s_state), p_state)


def test_scanned_bottleneck_stages_convert():
  # Bottleneck stages (projection in block1 only) convert both ways as well.
  scanned = shapes_of(models.create("resnet50", scan_blocks=True, width_multiplier=1 / 16))
  plain = shapes_of(models.create("resnet50", width_multiplier=1 / 16))
  assert jax.eval_shape(models.to_unscanned_variables, scanned) == plain
  assert jax.eval_shape(models.to_scanned_variables, plain) == scanned


def test_conversion_leaves_other_models_alone():
  tree = {"params": {"fc": {"kernel": jnp.ones((2, 2))}, "block": {"x": jnp.ones(1)}}}
  assert models.to_scanned_variables(tree) == tree
  assert models.to_unscanned_variables(tree) == tree
