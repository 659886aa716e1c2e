"""Architecture details of AlexNet, VGG and GoogLeNet, and the input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.models as models
from cnnjax.errors import ModelError
from cnnjax.models.googlenet import GOOGLENET_TABLE, InceptionRow


def abstract_output(model, size, **kwargs):
  """(output, variables) shapes of init at a size, without computing anything."""
  return jax.eval_shape(lambda: model.init_with_output(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)},
      jnp.zeros((2, size, size, 3)), **kwargs))


# ------------------------------------------------------------------- AlexNet


def test_alexnet_map_sizes_and_grouped_convolutions():
  (_, feats), variables = abstract_output(models.create("alexnet"), 224, features=True)
  assert feats["conv1"].shape == (2, 27, 27, 96)  # 55x55 conv, pooled to 27
  assert feats["conv2"].shape == (2, 13, 13, 256)
  assert feats["conv5"].shape == (2, 6, 6, 256)
  assert feats["pre_logits"].shape == (2, 4096)
  params = variables["params"]
  # Grouped (two-GPU) layers see half of their input channels.
  assert params["conv2"]["conv"]["kernel"].shape == (5, 5, 48, 256)
  assert params["conv3"]["conv"]["kernel"].shape == (3, 3, 256, 384)
  assert params["conv4"]["conv"]["kernel"].shape == (3, 3, 192, 384)
  assert params["conv5"]["conv"]["kernel"].shape == (3, 3, 192, 256)
  assert params["fc6"]["kernel"].shape == (9216, 4096)


def test_alexnet_227_input_also_gives_6x6():
  (_, feats), _ = abstract_output(models.create("alexnet"), 227, features=True)
  assert feats["conv5"].shape[1:3] == (6, 6)


def test_alexnet_initialisation_as_published(fast_compile):
  model = models.create("alexnet", width_multiplier=1 / 16, num_classes=10)
  key, images = jax.random.key(0), jnp.zeros((1, 224, 224, 3))
  params = fast_compile(model.init, key, images)(key, images)["params"]
  biases = {name: float(jnp.mean(params[name]["conv"]["bias"])) for name in
            ("conv1", "conv2", "conv3", "conv4", "conv5")}
  assert biases == {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0}
  assert float(jnp.mean(params["fc6"]["bias"])) == 1.0
  assert float(jnp.mean(params["fc7"]["bias"])) == 1.0
  assert float(jnp.mean(params["fc8"]["bias"])) == 0.0
  assert abs(float(jnp.std(params["fc6"]["kernel"])) - 0.01) < 1e-3


def test_alexnet_without_adaptive_pool_demands_the_papers_size():
  model = models.create("alexnet", adaptive_pool=False)
  with pytest.raises(ModelError, match="adaptive_pool=True"):
    abstract_output(model, 256)


# ----------------------------------------------------------------------- VGG


def test_vgg_c_has_the_1x1_convolutions():
  params = abstract_output(models.create("vgg_c"), 224)[1]["params"]
  assert params["conv3_3"]["conv"]["kernel"].shape == (1, 1, 256, 256)
  assert params["conv5_3"]["conv"]["kernel"].shape == (1, 1, 512, 512)
  assert params["conv3_2"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert sum(name.startswith("conv") for name in params) == 13


def test_vgg_bn_variant_has_bn_after_every_conv():
  variables = abstract_output(models.create("vgg16_bn"), 32)[1]
  assert all(set(layer) == {"conv", "bn"} for name, layer in variables["params"].items()
             if name.startswith("conv"))
  assert len(variables["batch_stats"]) == 13


def test_dense_vgg_matches_the_standard_vgg_at_224(make_variables, fast_compile):
  # A narrow VGG-A (same layers, 1/16 of the channels) keeps this cheap.
  standard = models.create("vgg_a", width_multiplier=1 / 16, num_classes=6)
  dense = models.create("vgg_a", width_multiplier=1 / 16, num_classes=6,
                        fully_convolutional=True)
  x224 = jax.random.normal(jax.random.key(0), (2, 224, 224, 3))
  variables = make_variables(standard, x224)
  dense_shapes = jax.eval_shape(lambda: dense.init(jax.random.key(0), x224))
  assert jax.tree.map(lambda v: v.shape, variables) == jax.tree.map(lambda v: v.shape,
                                                                     dense_shapes)
  x256 = jax.random.normal(jax.random.key(1), (2, 256, 256, 3))

  def run(variables, x224, x256):
    _, dense_feats = dense.apply(variables, x256, features=True)
    return standard.apply(variables, x224), dense.apply(variables, x224), dense_feats["fc6"]

  standard_logits, dense_logits, fc6_map = fast_compile(run, variables, x224, x256)(
      variables, x224, x256)
  np.testing.assert_allclose(dense_logits, standard_logits, rtol=1e-4, atol=1e-5)
  assert fc6_map.shape[1:3] == (2, 2)  # 256 input -> 8x8 pool5 -> 2x2 fc6 positions


def test_dense_vgg_refuses_inputs_below_224():
  with pytest.raises(ModelError, match="224"):
    abstract_output(models.create("vgg16", fully_convolutional=True), 200)


def test_vgg_without_adaptive_pool_names_the_fixes():
  with pytest.raises(ModelError, match="fully_convolutional=True"):
    abstract_output(models.create("vgg16", adaptive_pool=False), 256)


# ----------------------------------------------------------------- GoogLeNet


def test_googlenet_table_reads_like_the_paper():
  rows = [row for row in GOOGLENET_TABLE if isinstance(row, InceptionRow)]
  assert [row.name for row in rows] == ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
  assert [row.out_channels for row in rows] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def test_googlenet_map_sizes_round_up():
  (_, feats), _ = abstract_output(models.create("googlenet"), 224, features=True)
  assert feats["stem"].shape == (2, 28, 28, 192)
  assert feats["inception3b"].shape == (2, 28, 28, 480)
  assert feats["inception4e"].shape == (2, 14, 14, 832)
  assert feats["inception5b"].shape == (2, 7, 7, 1024)
  assert feats["pre_logits"].shape == (2, 1024)
  assert "aux_logits" not in feats


def test_googlenet_aux_heads_exist_in_the_tree_but_run_only_in_training():
  model = models.create("googlenet")
  variables = abstract_output(model, 224)[1]
  assert {"aux1", "aux2"} <= set(variables["params"])
  assert variables["params"]["aux1"]["fc1"]["kernel"].shape == (4 * 4 * 128, 1024)
  (_, feats), _ = abstract_output(model, 224, train=True, features=True)
  assert [a.shape for a in feats["aux_logits"]] == [(2, 1000), (2, 1000)]
  without = abstract_output(models.create("googlenet", aux_logits=False), 224)[1]
  assert not {"aux1", "aux2"} & set(without["params"])


def test_googlenet_torchvision_variant_structure():
  params = abstract_output(models.create("googlenet_torchvision"), 224)[1]["params"]
  assert params["inception3a"]["branch5x5"]["conv"]["kernel"].shape == (3, 3, 16, 32)
  assert set(params["inception3a"]["branch5x5"]) == {"conv", "bn"}
  paper = abstract_output(models.create("googlenet"), 224)[1]["params"]
  assert paper["inception3a"]["branch5x5"]["conv"]["kernel"].shape == (5, 5, 16, 32)


def test_googlenet_transform_input(make_variables, fast_compile):
  model = models.create("googlenet_torchvision", transform_input=True, aux_logits=False,
                        width_multiplier=1 / 16)
  plain = models.create("googlenet_torchvision", aux_logits=False, width_multiplier=1 / 16)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
  variables = make_variables(plain, x)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  moved = jnp.asarray((x * std + mean - 0.5) / 0.5, jnp.float32)

  def stems(variables, x, moved):
    # Only the stem is returned, so the compiled program stops there.
    return (model.apply(variables, x, features=True)[1]["stem"],
            plain.apply(variables, moved, features=True)[1]["stem"])

  transformed, reference = fast_compile(stems, variables, x, moved)(variables, x, moved)
  np.testing.assert_allclose(transformed, reference, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------- inputs


@pytest.mark.parametrize("name, minimum", [("resnet50", 32), ("cifar_resnet20", 4),
                                           ("vgg16", 32), ("googlenet", 32), ("alexnet", 63)])
def test_resolution_below_the_minimum_is_refused(name, minimum):
  model = models.create(name)
  with pytest.raises(ModelError, match=f"at least {minimum}x{minimum}"):
    abstract_output(model, minimum - 1)
  abstract_output(model, minimum)  # the minimum itself works


def test_wrong_rank_and_channel_count_are_refused():
  model = models.create("cifar_resnet20")
  with pytest.raises(ModelError, match="rank 3"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((32, 32, 3))))
  with pytest.raises(ModelError, match="3-channel.*got 1"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1))))
  with pytest.raises(ModelError, match="transpose"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 3, 32, 32))))
  gray = models.create("cifar_resnet20", in_channels=1)
  jax.eval_shape(lambda: gray.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1))))


def test_bfloat16_compute_returns_float32_logits():
  model = models.create("cifar_resnet20", dtype=jnp.bfloat16, width_multiplier=0.25)
  (logits, feats), variables = abstract_output(model, 16, features=True)
  assert logits.dtype == jnp.float32
  assert feats["stage3"].dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
