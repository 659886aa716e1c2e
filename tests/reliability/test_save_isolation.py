"""A checkpoint holds the state of the step it is named after, however slow its save.

`CheckpointStore.save` returns before the files are written, and the loop's
next train step donates the very state that was saved (its buffers may be
reused for the next state). If the background write read the arrays after
that, a checkpoint named step N would hold values of a later step. This
forces exactly that interleaving: orbax's background write is held back until
several donated steps have run over the saved state, then the checkpoint is
read back and compared bitwise.

What makes it safe (orbax 0.11-0.12): the device-to-host copy happens inside
`save`, before it returns. On the CPU that "copy" is a zero-copy view of the
device buffer, and XLA does not reuse a donated buffer while such a view
holds it: the next step then writes its result into new memory.
"""

from __future__ import annotations

import asyncio
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.train import checkpoint

_HOLD_S = 1.0


def _state(value: float) -> dict:
  big = jnp.full((256, 256), value, jnp.float32)  # large enough to be donated and reused
  return {"step": jnp.asarray(7, jnp.int32), "rng": jnp.zeros((2,), jnp.uint32),
          "lr_control": {}, "params": {"w": big, "b": jnp.full((256,), value, jnp.float32)},
          "batch_stats": {"mean": big * 2}, "ema_params": {},
          "opt_state": ({"mu": big * 3},)}


# The next train step: every array changes, and the input state is donated.
_next_step = jax.jit(lambda s: jax.tree_util.tree_map(lambda a: a + 1, s), donate_argnums=0)


@pytest.fixture()
def slow_background_write(monkeypatch):
  """Holds orbax's background write of the array data back by _HOLD_S; records when it ran."""
  from orbax.checkpoint._src.serialization import jax_array_handlers  # pylint: disable=g-import-not-at-top
  real = getattr(jax_array_handlers, "_async_serialize_replica_slices", None)
  if real is None:
    pytest.skip("this orbax-checkpoint has no _async_serialize_replica_slices to hold back")
  started = []

  async def held_back(*args, **kwargs):
    await asyncio.sleep(_HOLD_S)
    started.append(time.monotonic())
    return await real(*args, **kwargs)
  monkeypatch.setattr(jax_array_handlers, "_async_serialize_replica_slices", held_back)
  return started


def test_a_slow_save_holds_the_values_of_its_step_not_of_the_donated_next_ones(
    tmp_path, slow_background_write):
  workdir = str(tmp_path)
  state = jax.block_until_ready(jax.jit(lambda: _state(1.0))())
  expected = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), state)
  store = checkpoint.CheckpointStore(workdir, keep=2)
  try:
    store.save(state, {"step": 7, "best_eval_error": 1.0})
    for _ in range(5):  # the loop's next steps, at once, over the donated state
      state = _next_step(state)
    jax.block_until_ready(state)
    stepped = time.monotonic()
    store.wait()
    assert slow_background_write and min(slow_background_write) > stepped, (
        "the write was not held back until after the donated steps")
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    restored, meta = store.restore(abstract, 7)
  finally:
    store.close()
  assert meta["step"] == 7
  np.testing.assert_array_equal(np.asarray(state["params"]["w"])[0, 0], 6.0)  # it did step on
  for name in ("params", "batch_stats", "opt_state", "step"):
    for got, want in zip(jax.tree_util.tree_leaves(restored[name]),
                         jax.tree_util.tree_leaves(expected[name])):
      np.testing.assert_array_equal(np.asarray(got), want)
  assert os.path.isdir(os.path.join(workdir, checkpoint.LATEST_DIR, "7"))
