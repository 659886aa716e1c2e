"""A train step that cannot fit is refused before it runs, with a batch size that fits."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import psutil
import pytest
from train_helpers import TinyNet, _components

from cnnjax import sharding
from cnnjax.errors import ConfigError
from cnnjax.train import memory, steps

IMAGE = 256


def _abstract(batch_size: int):
  init, mesh = _components(TinyNet(), (IMAGE, IMAGE, 3), ())
  state = sharding.abstract_replicated(init, mesh, jax.random.PRNGKey(0))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, IMAGE, IMAGE, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  return state, batch, mesh


def test_a_step_larger_than_the_machine_is_refused_with_a_size_that_fits():
  free = psutil.virtual_memory().available
  # TinyNet keeps ~10 activation-sized arrays of 8 channels: ~20 KiB per pixel row of
  # a batch; this batch needs several times the free memory.
  batch_size = 1 << max(8, (4 * free // (IMAGE * IMAGE * 8 * 4 * 10)).bit_length())
  state, batch, mesh = _abstract(batch_size)
  train_step = steps.jit_for_mesh(mesh)[0]
  with pytest.raises(ConfigError) as info:
    memory.compile_checked(train_step, state, batch, mesh, model="tiny", image_size=IMAGE)
  message = str(info.value)
  assert "available host RAM" in message and "GiB" in message, message
  suggested = int(re.search(r"config\.run\.batch_size=(\d+)", message).group(1))
  assert 0 < suggested < batch_size
  assert re.search(r"config\.input\.image_size=(\d+)", message)
  # The suggestion fits: the same check passes at that batch size.
  state, batch, mesh = _abstract(suggested)
  compiled = memory.compile_checked(train_step, state, batch, mesh, model="tiny",
                                    image_size=IMAGE)
  assert memory.step_bytes(compiled)["total"] <= memory.HEADROOM * free


def test_a_step_that_fits_is_compiled_once_and_returned():
  state, batch, mesh = _abstract(4)
  compiled = memory.compile_checked(steps.jit_for_mesh(mesh)[0], state, batch, mesh,
                                    model="tiny", image_size=IMAGE)
  needed = memory.step_bytes(compiled)
  assert needed["temporaries"] > 0 and needed["resident"] > 0
  wrapped = lambda state, batch: None  # noqa: E731  (no .lower: passed through unchecked)
  assert memory.compile_checked(wrapped, state, batch, mesh, model="tiny",
                                image_size=IMAGE) is wrapped
