"""Weight-decay masks decide by parameter name: scan_blocks' stacked BN parameters are 2-D."""

import jax
import jax.numpy as jnp

from cnnjax import models
from cnnjax.train import optim


def _decayed(params, which):
  mask = optim.weight_decay_mask(params, which)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): bool(leaf) for path, leaf in flat}


def _params(scan_blocks):
  model = models.create("cifar_resnet20", num_classes=10, scan_blocks=scan_blocks)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))
  return shapes["params"]


def test_scanned_batchnorm_is_not_decayed_in_any_block():
  params = _params(scan_blocks=True)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  stacked_bn = [path for path, leaf in flat
                if str(getattr(path[-1], "key", "")) == "scale" and leaf.ndim == 2]
  assert stacked_bn, "scan_blocks=True should stack BN scales of blocks 2..n (2-D)"
  for which in ("kernels", "kernels_and_biases"):
    decayed = _decayed(params, which)
    norm = {k: v for k, v in decayed.items()
            if k.endswith("/scale") or ("/bn" in k.lower() or "norm" in k.lower())
            and k.endswith("/bias")}
    assert norm and not any(norm.values()), (which, [k for k, v in norm.items() if v])
    kernels = {k: v for k, v in decayed.items() if k.endswith("/kernel")}
    assert kernels and all(kernels.values())


def test_scan_blocks_decays_the_same_parameters_as_unrolled_blocks():
  for which in ("kernels", "kernels_and_biases"):
    unrolled = _decayed(_params(scan_blocks=False), which)
    scanned = _decayed(_params(scan_blocks=True), which)
    assert sum(unrolled.values()) > 0
    # Stacking merges blocks 2..n into one leaf per name: compare the leaf names' decisions.
    by_name = lambda d: {(k.rsplit("/", 1)[-1], v) for k, v in d.items()}  # noqa: E731
    assert by_name(scanned) == by_name(unrolled)
