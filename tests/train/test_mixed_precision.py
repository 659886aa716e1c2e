"""Mixed precision, read from the program XLA receives.

config.model.dtype="bfloat16" builds the model with dtype=bfloat16 and
param_dtype=float32 (`setup.create_model`). The train step's HLO, as jit
lowers it for any backend, must then run every convolution and matmul in
bfloat16 while BatchNorm normalises in float32 and the loss (log-softmax)
is float32; params, BatchNorm statistics and the optimiser state stay
float32 through the step (checked with eval_shape).

On 8 virtual CPU devices the test records which element type each
cross-device all-reduce has in the partitioned program (XLA's SPMD
partitioner's output, dumped with --xla_dump_hlo_pass_re): the gradients of
the bfloat16 layers (conv kernels, the classifier) are summed across devices
in bfloat16 and converted to float32 after the sum; BatchNorm's
scale/offset gradients, its running statistics and the scalar metrics are
reduced in float32. XLA:CPU then promotes the bfloat16 all-reduces to float32
(its all-reduce-promotion pass), so the compiled CPU program reduces in
float32 only; a GPU backend reduces bfloat16 natively (see
benchmarks/RESULTS.md, section gpu).

float16 has no loss scaling in cnnjax, so config validation refuses it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from train_helpers import run_objects, settings_with

from cnnjax.errors import ConfigError
from cnnjax.train import optim, setup, steps

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODEL = "cifar_resnet20"
MODEL_KWARGS = {"width_multiplier": 0.25}
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
HLO_TYPES = {"bfloat16": "bf16", "float32": "f32"}
# An HLO instruction with an array result: "%name = f32[8,16]{1,0} opcode(".
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\]\S* ([\w-]+)\(", re.M)


def run_config(dtype: str, batch_size: int = 8, num_devices: int = 1):
  """The Settings setup and optim read, for the small CIFAR ResNet."""
  del num_devices
  # cpu_kernels "off": the program every backend gets, not the CPU-tuned variant.
  return settings_with(**{"model.name": MODEL, "model.kwargs": dict(MODEL_KWARGS),
                          "model.num_classes": NUM_CLASSES, "model.dtype": dtype,
                          "run.batch_size": batch_size, "model.bn_group_size": 0,
                          "model.cpu_kernels": "off"})


def instructions(hlo: str, opcode: str) -> list[tuple[str, str]]:
  """(element type, shape) of every `opcode` instruction with an array result."""
  return [(etype, shape) for etype, shape, op in INSTRUCTION.findall(hlo) if op == opcode]


def _step_program(dtype: str):
  model, tx, rules = run_objects(run_config(dtype))
  init = setup.state_initializer(model, tx, rules, IMAGE_SHAPE)
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  batch = {"image": jax.ShapeDtypeStruct((8,) + IMAGE_SHAPE, jnp.float32),
           "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
  new_state, metrics = jax.eval_shape(steps.train_step_fn, state, batch)
  hlo = jax.jit(steps.train_step_fn).lower(state, batch).as_text(dialect="hlo")
  return state, new_state, metrics, hlo


@pytest.fixture(scope="module", params=["bfloat16", "float32"])
def program(request):
  return (request.param,) + _step_program(request.param)


def _kernels(params, name: str = "kernel") -> list[tuple[int, ...]]:
  return [leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if steps.path_name(path).endswith(name)]


def test_convolutions_and_matmuls_run_in_the_compute_dtype(program):
  dtype, state, _, _, hlo = program
  convolution_types = [etype for etype, _ in instructions(hlo, "convolution")]
  dot_types = [etype for etype, _ in instructions(hlo, "dot")]
  conv_kernels = [s for s in _kernels(state.params) if len(s) == 4]
  dense_kernels = [s for s in _kernels(state.params) if len(s) == 2]
  # At least the forward, input gradient (none for the stem) and kernel gradient
  # of every convolution; forward, input and kernel gradient of the classifier.
  assert len(convolution_types) >= 3 * len(conv_kernels) - 1
  assert len(dot_types) == 3 * len(dense_kernels) == 3
  assert set(convolution_types) == set(dot_types) == {HLO_TYPES[dtype]}


def test_params_batch_stats_and_optimizer_state_stay_float32(program):
  _, state, new_state, metrics, _ = program
  for before, after in ((state.params, new_state.params),
                        (state.batch_stats, new_state.batch_stats),
                        (state.opt_state, new_state.opt_state)):
    floats = [x.dtype for x in jax.tree_util.tree_leaves(before)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype(jnp.float32)}
    assert ([x.dtype for x in jax.tree_util.tree_leaves(after)]
            == [x.dtype for x in jax.tree_util.tree_leaves(before)])
  momentum = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim == 4]
  assert momentum and all(x.dtype == jnp.float32 for x in momentum)
  for key in ("loss", "total_loss", "grad_norm", "learning_rate"):
    assert metrics[key].dtype == jnp.float32, key


def test_batchnorm_and_the_loss_compute_in_float32(program):
  dtype, state, _, _, hlo = program
  num_batchnorms = len(_kernels(state.batch_stats, "mean"))
  # One rsqrt(var + eps) per BatchNorm layer, in float32 also under bf16.
  assert instructions(hlo, "rsqrt") == [("f32", s) for _, s in instructions(hlo, "rsqrt")]
  assert len(instructions(hlo, "rsqrt")) == num_batchnorms
  # The log-softmax of the loss: its exp and log are float32.
  for opcode in ("exponential", "log"):
    assert {etype for etype, _ in instructions(hlo, opcode)} == {"f32"}, opcode
  # Every reduction (BatchNorm's mean and variance, the loss, the norms)
  # accumulates in float32, except the classifier bias gradient under bf16:
  # the batch sum of the bf16 logits' cotangent, as the bf16 dense layer computes it.
  low_precision = [(t, s) for t, s in instructions(hlo, "reduce") if t in ("bf16", "f16")]
  expected = [("bf16", str(NUM_CLASSES))] if dtype == "bfloat16" else []
  assert low_precision == expected


ALL_REDUCE_SCRIPT = r"""
import glob, json, os, re, sys
dump = sys.argv[1]
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 --xla_dump_to=" + dump +
                           " --xla_dump_hlo_pass_re=spmd-partitioning"
                           " --xla_dump_hlo_module_re=train_step_fn")
import jax, jax.numpy as jnp
from cnnjax import sharding
from cnnjax.train import optim, setup, steps
from test_mixed_precision import IMAGE_SHAPE, run_config
from train_helpers import run_objects

mesh = sharding.make_mesh()
model, tx, rules = run_objects(run_config("bfloat16", batch_size=16), num_devices=8)
init = setup.state_initializer(model, tx, rules, IMAGE_SHAPE)
state = sharding.abstract_replicated(init, mesh, jax.random.PRNGKey(0))
rows = sharding.batch_sharded(mesh)
batch = {"image": jax.ShapeDtypeStruct((16,) + IMAGE_SHAPE, jnp.float32, sharding=rows),
         "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=rows)}
train, _, _ = steps.jit_for_mesh(mesh)
compiled = train.lower(state, batch).compile().as_text()
[partitioned] = glob.glob(os.path.join(dump, "*train_step_fn*after_spmd-partitioning*.txt"))
def all_reduces(text):
  found = []
  for line in text.splitlines():
    match = re.search(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) all-reduce(?:-start)?\(", line)
    if match:
      name = re.search(r'op_name="([^"]*)"', line)
      found.append({"types": re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)),
                    "op_name": name.group(1) if name else ""})
  return found
params = [(steps.path_name(p), list(x.shape)) for p, x in
          jax.tree_util.tree_flatten_with_path(state.params)[0]]
print(json.dumps({"partitioned": all_reduces(open(partitioned).read()),
                  "compiled": all_reduces(compiled), "params": params}))
"""


def test_gradient_all_reduce_dtypes_on_8_devices(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([HERE, REPO, os.environ.get("PYTHONPATH", "")])}
  completed = subprocess.run([sys.executable, "-c", ALL_REDUCE_SCRIPT, str(tmp_path / "dump")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                             check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]
  found = json.loads(completed.stdout.strip().splitlines()[-1])
  partitioned = found["partitioned"]
  assert partitioned and all(len(r["types"]) == 1 for r in partitioned)  # not yet combined
  by_type = collections.defaultdict(list)
  for record in partitioned:
    (etype, shape), = record["types"]
    by_type[etype].append((tuple(int(d) for d in shape.split(",") if d), record["op_name"]))
  assert set(by_type) == {"bf16", "f32"}
  # bfloat16: exactly one all-reduce per parameter of a bf16 layer (every conv
  # kernel, the classifier's kernel and bias), i.e. every parameter but BatchNorm's
  # (compared as sorted dimensions: the classifier's kernel gradient is reduced
  # transposed, before its layout is fixed).
  bf16_layer_params = sorted(tuple(sorted(shape)) for name, shape in found["params"]
                             if "/bn/" not in f"/{name}")
  assert sorted(tuple(sorted(shape)) for shape, _ in by_type["bf16"]) == bf16_layer_params
  assert all("transpose(jvp(" in op for _, op in by_type["bf16"])  # gradients
  # float32: BatchNorm (its scale/offset gradients and the average of the
  # per-device statistics into the running averages) and scalar metrics.
  assert all("/bn/" in op or shape == () for shape, op in by_type["f32"])
  assert any("transpose(jvp(" in op for _, op in by_type["f32"])
  # XLA:CPU promotes bf16 all-reduces: its compiled program reduces in float32 only.
  compiled_types = {etype for record in found["compiled"] for etype, _ in record["types"]}
  assert compiled_types == {"f32"}


def test_float16_is_refused_with_a_pointer_to_bfloat16(tiny_config, tmp_path):
  from cnnjax.train import config as config_lib
  config = tiny_config(**{"model.dtype": "float16"})
  with pytest.raises(ConfigError, match="bfloat16") as error:
    config_lib.validate(config, num_devices=1)
  assert "config.model.dtype='float16'" in str(error.value) and "loss scaling" in str(error.value)
  from cnnjax.train import run
  with pytest.raises(ConfigError, match="float16"):
    run(config, str(tmp_path / "workdir"))
  assert not (tmp_path / "workdir").exists()  # refused before anything was written
