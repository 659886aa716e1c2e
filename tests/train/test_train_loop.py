"""End to end through cnnjax.train.run on the embedded digits: outputs, exact resume,
restore for evaluation, the VGG warm start and the errors raised before any compute."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from train_helpers import make_tiny_config

from cnnjax.errors import CheckpointError, ConfigError, NonFiniteError
from cnnjax.models import warm_start
from cnnjax.train import checkpoint, loop, run, workdir_lock
from cnnjax.train.writer import read_metrics

# Plateau schedule, EMA and mid-run evaluations make the resume test cover
# every piece of state that is not a parameter.
RESUME_SETTINGS = {"run.num_steps": 8, "eval.every_steps": 4, "checkpoint.every_steps": 4,
                   "schedule.name": "plateau", "schedule.plateau.patience": 1,
                   "optimizer.ema_decay": 0.9, "run.log_every_steps": 4}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, digits_dir):
  """One uninterrupted 8-step run, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  summary = run(make_tiny_config(digits_dir, **RESUME_SETTINGS), workdir)
  return workdir, summary


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_run_writes_metrics_checkpoints_and_learns(straight_run):
  workdir, summary = straight_run
  assert summary["step"] == 8 and not summary["interrupted"]
  assert 0.0 <= summary["eval"]["top1_error"] <= 1.0 and "eval_ema" in summary
  for name in ("config.json", "metrics.jsonl", "checkpoints", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert workdir_lock.read_owner(workdir) is None  # released: nobody holds the workdir
  with open(os.path.join(workdir, "config.json")) as f:
    stored = json.load(f)
  assert stored["model"]["num_classes"] == 10  # resolved from the dataset
  assert stored["input"]["image_size"] == 16
  train_rows = read_metrics(workdir, "train")
  assert [r["step"] for r in train_rows] == [4, 8]
  for row in train_rows:
    for key in ("loss", "top1_error", "top5_error", "learning_rate", "images_per_sec",
                "grad_norm", "param_norm", "update_norm", "epoch"):
      assert np.isfinite(row[key]), key
  assert train_rows[-1]["loss"] < train_rows[0]["loss"]
  val_rows = read_metrics(workdir, "test")
  assert [r["step"] for r in val_rows] == [4, 8]
  assert val_rows[0]["num_examples"] == 128  # eval_num_batches=2 of 64
  assert [r["step"] for r in read_metrics(workdir, "test_ema")] == [4, 8]
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                if s.isdigit()) == [4, 8]


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bitwise_identical(straight_run, tmp_path, digits_dir):
  straight_dir, _ = straight_run
  workdir = str(tmp_path / "resumed")
  config = make_tiny_config(digits_dir, **RESUME_SETTINGS)
  first = run(config, workdir, stop_after_steps=3)
  assert first["interrupted"] and first["step"] == 3
  assert checkpoint.CheckpointStore(workdir).latest_step() == 3
  second = run(config, workdir)
  assert second["step"] == 8 and not second["interrupted"]
  for use_ema in (False, True):
    a, meta_a = checkpoint.restore_variables(straight_dir, use_ema=use_ema)
    b, meta_b = checkpoint.restore_variables(workdir, use_ema=use_ema)
    assert meta_a["step"] == meta_b["step"] == 8
    for x, y in zip(_leaves(a), _leaves(b)):
      np.testing.assert_array_equal(x, y)
  rows_a = read_metrics(straight_dir, "test")
  rows_b = read_metrics(workdir, "test")
  assert rows_a[-1]["loss"] == rows_b[-1]["loss"]


def test_restore_for_eval(straight_run, digits_dir):
  workdir, _ = straight_run
  config, model, variables = checkpoint.restore_for_eval(workdir)
  assert config.model.name == "cifar_resnet20" and config.model.num_classes == 10
  assert set(variables) == {"params", "batch_stats"}
  logits = model.apply(variables, np.zeros((2, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (2, 10)
  _, _, ema = checkpoint.restore_for_eval(workdir, use_ema=True)
  assert any(np.any(x != y) for x, y in zip(_leaves(variables["params"]), _leaves(ema["params"])))
  _, _, best = checkpoint.restore_for_eval(workdir, which="best")
  assert set(best) == {"params", "batch_stats"}


def test_workdir_of_another_model_fails_before_compute(straight_run, digits_dir, monkeypatch):
  workdir, _ = straight_run
  def no_compute(*args, **kwargs):
    raise AssertionError("compiled something before refusing the workdir")
  monkeypatch.setattr(loop.setup, "create_state", no_compute)
  monkeypatch.setattr(loop.steps, "jit_for_mesh", no_compute)
  other = make_tiny_config(digits_dir, **RESUME_SETTINGS)
  other.model.kwargs = {"stage_sizes": (1, 1, 1), "width_multiplier": 0.5}
  with pytest.raises(CheckpointError, match="different model"):
    run(other, workdir)
  other = make_tiny_config(digits_dir, **RESUME_SETTINGS)
  other.model.num_classes = 12
  with pytest.raises(CheckpointError, match="num_classes"):
    run(other, workdir)
  other = make_tiny_config(digits_dir, **dict(RESUME_SETTINGS, **{"optimizer.ema_decay": 0.0}))
  with pytest.raises(CheckpointError, match="ema_params"):
    run(other, workdir)


def test_missing_or_empty_init_from(tmp_path, digits_dir):
  config = make_tiny_config(digits_dir, **{"model.name": "vgg_a",
                                            "model.kwargs": {"width_multiplier": 0.125},
                                            "model.init_from": str(tmp_path / "nowhere")})
  with pytest.raises(ConfigError, match="init_from"):
    run(config, str(tmp_path / "w"))
  os.makedirs(tmp_path / "empty")
  config.model.init_from = str(tmp_path / "empty")
  with pytest.raises(CheckpointError, match="no checkpoint"):
    run(config, str(tmp_path / "w"))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits_dir):
  workdir = str(tmp_path / "diverge")
  config = make_tiny_config(digits_dir, **{"optimizer.learning_rate": 1e4, "run.num_steps": 20,
                                            "checkpoint.every_steps": 1,
                                            "run.log_every_steps": 1})
  with pytest.raises(NonFiniteError, match=r"step \d+: the .* is NaN/Inf") as info:
    run(config, workdir)
  bad_step = int(str(info.value).split("step ")[1].split(":")[0])
  saved = checkpoint._steps_in(os.path.join(workdir, "checkpoints"))
  assert saved and max(saved) < bad_step
  variables, _ = checkpoint.restore_variables(workdir)
  assert all(np.all(np.isfinite(x)) for x in _leaves(variables))


VGG_TINY = {"width_multiplier": 0.125, "fc_features": 16}


def _prepared_run(config, workdir):
  """The loop's set-up without training: config checks, data, model, initial state."""
  os.makedirs(workdir, exist_ok=True)
  r = loop.prepare(loop.config_lib.validate(config), workdir)
  state, how = loop.initial_state(r)
  return r, state, how


def test_vgg_warm_start_copies_the_papers_layers(tmp_path, digits_dir):
  # A stands in for a trained net A: its random init saved as a step-1 checkpoint.
  source_dir = str(tmp_path / "vgg_a")
  config_a = make_tiny_config(digits_dir, **{"model.name": "vgg_a", "model.kwargs": VGG_TINY,
                                             "input.image_size": 32})
  r, state_a, _ = _prepared_run(config_a, source_dir)
  loop.save(r, state_a, 1)
  r.store.wait()
  r.store.close()

  config = make_tiny_config(digits_dir, **{"model.name": "vgg_b", "model.kwargs": VGG_TINY,
                                           "input.image_size": 32, "model.init_from": source_dir})
  r, state, how = _prepared_run(config, str(tmp_path / "vgg_b"))
  assert "warm start" in how
  source, _ = checkpoint.restore_variables(source_dir)
  fresh = loop.setup.create_state(r.init_fn, r.mesh, seed=config.run.seed)
  copied = {"conv1_1": "conv1_1", "conv2_1": "conv2_1", "conv3_1": "conv3_1",
            "conv3_2": "conv3_2", "fc6": "fc6", "fc7": "fc7", "fc8": "fc8"}
  for layer in state.params:
    got = _leaves(state.params[layer])
    if layer in copied:
      for x, y in zip(got, _leaves(source["params"][copied[layer]])):
        np.testing.assert_array_equal(x, y)
    else:  # conv1_2, conv2_2 (B's extra layers), conv4_x, conv5_x: fresh, as if no warm start
      for x, y in zip(got, _leaves(fresh.params[layer])):
        np.testing.assert_array_equal(x, y)
  assert set(copied) < set(state.params)
  r.store.close()


def test_warm_start_mapping_for_deeper_nets():
  """A's conv1_1, conv2_1, conv3_1, conv3_2 land where their shapes fit in C, D and E."""
  import cnnjax.models
  shapes = {}
  for name in ("vgg_a", "vgg_c", "vgg_d", "vgg_e"):
    model = cnnjax.models.create(name, num_classes=10, **VGG_TINY)
    shapes[name] = jax.eval_shape(
        lambda m=model: m.init({"params": jax.random.PRNGKey(0)}, np.zeros((1, 32, 32, 3)),
                               train=False))["params"]
  for deeper in ("vgg_c", "vgg_d", "vgg_e"):
    mapping = warm_start.vgg_layer_mapping(shapes["vgg_a"], shapes[deeper])
    assert mapping == {"conv1_1": "conv1_1", "conv2_1": "conv2_1", "conv3_1": "conv3_1",
                       "conv3_2": "conv3_2", "fc6": "fc6", "fc7": "fc7", "fc8": "fc8"}


def test_a_workdir_with_a_flat_config_json_resumes(tmp_path, digits_dir):
  """config.json as the flat layout wrote it (one dict, old names) still loads: the run
  resumes from its checkpoint, evaluation rebuilds the model, and the file is rewritten
  by subtree; a name removed before the grouping is refused with its replacement."""
  from cnnjax.train import config as config_lib
  workdir = str(tmp_path / "flat")
  config = make_tiny_config(digits_dir, **{"run.num_steps": 4})
  assert run(config, workdir, stop_after_steps=2)["step"] == 2
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    flat = config_lib.to_flat(json.load(f))
  assert flat["model"] == "cifar_resnet20" and flat["num_classes"] == 10
  with open(path, "w") as f:
    json.dump(flat, f)
  settings, model, _ = checkpoint.restore_for_eval(workdir)
  assert settings.model.num_classes == 10 and model.num_classes == 10
  summary = run(config, workdir)
  assert summary["step"] == 4 and not summary["interrupted"]
  with open(path) as f:
    assert json.load(f)["model"]["name"] == "cifar_resnet20"  # rewritten by subtree
  with open(path, "w") as f:
    json.dump(dict(flat, device_preprocessing="on"), f)
  with pytest.raises(ConfigError, match="device_preprocessing was removed; use "
                     "config.input.boundary"):
    run(make_tiny_config(digits_dir, **{"run.num_steps": 6}), workdir)
