"""train.py: config mistakes are named before anything runs; SIGTERM saves; a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TRAIN = os.path.join(REPO, "train.py")


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return env


def _train(*args, timeout=120):
  return subprocess.run([sys.executable, TRAIN, *args], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("flag,message", [
    # ml_collections' own words, on one line
    ("--config.optimizer.learning_rat=0.1",
     "ConfigError: --config.optimizer.learning_rat=0.1: unknown config key 'learning_rat'.*Did "
     "you mean \"learning_rate\""),
    ("--config.schedule.plateau.paitence=3", "Did you mean \"patience\""),
    # what ml_collections cannot say: the form a free-form dict takes ...
    ("--config.model.kwargs.depth=3",
     "ConfigError: .*free-form dict.*--config.model.kwargs=\"{'depth': 3}\""),
    # ... a bare word suggested as a quoted string, the form that parses ...
    ("--config.input.augment_kwargs.photometric=device",
     "--config.input.augment_kwargs=\"{'photometric': 'device'}\""),
    # ... that a plain value has no sub-keys ...
    ("--config.model.name.depth=3",
     "ConfigError: --config.model.name.depth=3: config.model.name is a str"),
    # ... and where a name of the flat layout went
    ("--config.learning_rate=0.1",
     "config.learning_rate is now config.optimizer.learning_rate"),
    ("--config.learning_rat=0.1", "did you mean config.optimizer.learning_rate"),
    ("--config.input_pipeline=dali",
     "config.input_pipeline was removed; use config.input.boundary"),
])
def test_config_mistakes_fail_before_any_compute(flag, message, tmp_path):
  import re
  result = _train(f"--workdir={tmp_path / 'w'}", flag)
  assert result.returncode == 2, result.stderr[-2000:]
  assert re.search(message, result.stderr), result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("args,message", [
    (["--config.run.batch_size=big"],
     "Flags parsing error: flag --config.run.batch_size=big: invalid literal for int"),
    (["--config=cnnjax/configs/vgg_imagenet.py:Z"], "ConfigError: vgg_imagenet.py argument 'Z'"),
    (["--num_processes=two"], "Flags parsing error: flag --num_processes=two"),
])
def test_absl_reports_its_own_flag_errors(args, message, tmp_path):
  result = _train(f"--workdir={tmp_path / 'w'}", *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / "w")


def test_multihost_flags_reach_jax_distributed_initialize(tmp_path):
  """train.py --multihost passes the launcher flags, --local_device_ids included, to JAX."""
  code = f"""
import sys, runpy, json, jax
calls = []
jax.distributed.initialize = lambda **kwargs: calls.append(kwargs) or sys.exit(
    'INIT ' + json.dumps(calls[0]))
sys.argv = ['train.py', '--multihost', '--coordinator_address=10.0.0.1:1234',
            '--num_processes=4', '--process_id=3', '--local_device_ids=0,2',
            '--workdir={tmp_path / 'w'}']
runpy.run_path({TRAIN!r}, run_name='__main__')
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
  line = [x for x in result.stderr.splitlines() if x.startswith("INIT ")]
  assert line, result.stderr[-2000:]
  assert json.loads(line[0][5:]) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                     "process_id": 3, "local_device_ids": [0, 2]}


def test_bad_value_is_named_by_run(tmp_path):
  result = _train(f"--workdir={tmp_path / 'w'}", "--config.input.augment=cifar100")
  assert result.returncode == 1
  assert "ConfigError: config.input.augment='cifar100' is not one of" in result.stderr


def test_overrides_are_literals_never_code(tmp_path):
  result = _train(f"--workdir={tmp_path / 'w'}", "--config.input.dataset=__import__('os').getcwd()",
                  "--config.model.name=cifar_resnet2O")
  assert result.returncode == 1
  assert "cifar_resnet20" in result.stderr  # the suggestion for the typo, nothing executed


TINY = ["--config.model.kwargs={'stage_sizes': (1, 1, 1), 'width_multiplier': 0.25}",
        "--config.input.image_size=16", "--config.run.batch_size=16", "--config.eval.num_batches=1",
        "--config.schedule.name=constant", "--config.schedule.warmup_steps=-1",
        "--config.run.log_every_steps=1",
        "--config.checkpoint.every_steps=-1", "--config.eval.every_steps=-1",
        "--config.run.progress_bar=false"]


@pytest.mark.slow
def test_sigterm_saves_and_the_same_command_resumes(tmp_path, digits_dir):
  workdir = str(tmp_path / "w")
  # The second run finds its programs in the persistent compilation cache.
  cache = f"--config.run.compilation_cache_dir={tmp_path / 'jax_cache'}"
  args = [sys.executable, TRAIN, f"--workdir={workdir}", f"--config.input.data_dir={digits_dir}",
          "--config.run.num_steps=100000", *TINY, cache, "--config.run.profile_steps=(2, 2)"]
  proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        break
      time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, output[-3000:]
  assert "SIGTERM: saved step" in output
  saved = int(output.split("SIGTERM: saved step ")[1].split()[0])
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))
  assert not os.path.exists(os.path.join(workdir, "LOCK.owner"))  # released
  assert os.path.isdir(os.path.join(workdir, "profile"))

  result = subprocess.run(args[:4] + [f"--config.run.num_steps={saved + 2}"] + args[5:-1], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from step {saved}" in result.stdout
  assert "final held-out error" in result.stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[-1]["split"] == "test" and rows[-1]["step"] == saved + 2


def test_the_train_step_needs_neither_tensorflow_nor_ml_collections():
  code = """
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('ml_collections', 'tensorflow', 'tensorflow_datasets'):
      raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import cnnjax.train.steps, cnnjax.sharding, cnnjax.train.setup, cnnjax.train.checkpoint
print('IMPORTED')
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
  assert "IMPORTED" in result.stdout, result.stderr[-2000:]


def _module_train(*args, cwd, timeout=120):
  """`python -m cnnjax.train` started in `cwd`, with this checkout importable."""
  env = _env()
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "cnnjax.train", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_recipes_are_found_by_name_from_any_directory(tmp_path):
  """`--config resnet_cifar10:110` outside the checkout reaches the run (which refuses -3 steps)."""
  result = _module_train("--config", "resnet_cifar10:110", "--config.run.num_steps=-3",
                         cwd=tmp_path)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "ConfigError: " in result.stderr and "run.num_steps" in result.stderr, (
      result.stderr[-2000:])
  assert "Traceback" not in result.stderr


def test_an_unknown_recipe_name_suggests_the_close_ones(tmp_path):
  result = _module_train("--config=resnet_cifar:110", cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "no recipe named 'resnet_cifar'" in result.stderr and "resnet_cifar10" in result.stderr
  assert "Traceback" not in result.stderr


def test_recipe_names_and_paths_resolve():
  from cnnjax.configs import recipe_path
  from cnnjax.train.__main__ import resolve_recipe_names
  argv = ["cnnjax-train", "--config", "quickstart", "--config.run.num_steps=3"]
  assert resolve_recipe_names(argv)[2] == recipe_path("quickstart")
  assert resolve_recipe_names(["p", "--config=vgg_imagenet:D,jitter"])[1] == (
      "--config=" + recipe_path("vgg_imagenet") + ":D,jitter")
  kept = ["p", "--config=./mine.py:3", "--config", "cnnjax/configs/quickstart.py"]
  assert resolve_recipe_names(kept) == kept  # paths stay paths
