"""What each launcher's environment makes `initialize_distributed` pass to JAX.

JAX's own auto-detection restricts a SLURM or Open MPI process to device
[local rank] even when coordinator, count and id are given, which on a node
running one process leaves all but one GPU idle. These tests record the
arguments that reach `jax.distributed.initialize` under each launcher.
"""

from __future__ import annotations

import pytest

from cnnjax import sharding
from cnnjax.errors import ConfigError

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "2"}
OPEN_MPI = {"OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.1:5678", "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
LAUNCHER_VARIABLES = sorted(set(SLURM) | set(OPEN_MPI) | {
    "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES", sharding.LOCAL_DEVICE_IDS_ENV, "TPU_WORKER_ID",
    "TPU_ACCELERATOR_TYPE"})


@pytest.fixture()
def launch(monkeypatch):
  """Runs initialize_distributed in a launcher's environment; returns what JAX received."""
  def run(environ, *args, **kwargs):
    for name in LAUNCHER_VARIABLES:
      monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
      monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(sharding.jax.distributed, "initialize",
                        lambda **received: calls.append(received))
    sharding.initialize_distributed(*args, **kwargs)
    (received,) = calls
    return received
  return run


def test_tpu_slice_leaves_everything_to_jax(launch):
  received = launch({"TPU_WORKER_ID": "3", "TPU_ACCELERATOR_TYPE": "v5litepod-16"})
  assert received == {"coordinator_address": None, "num_processes": None, "process_id": None,
                      "local_device_ids": None}


def test_slurm_one_task_per_node_uses_all_of_its_gpus(launch):
  received = launch({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
                     "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  assert received["local_device_ids"] == [0, 1, 2, 3]
  assert received["coordinator_address"] is None  # the rest: JAX's SLURM detection


def test_slurm_one_task_per_node_with_flags_still_uses_all_gpus(launch):
  """JAX would set [SLURM_LOCALID] here although all three flags are given."""
  received = launch({**SLURM, "SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1"},
                    "node001:1234", 2, 1)
  assert received == {"coordinator_address": "node001:1234", "num_processes": 2,
                      "process_id": 1, "local_device_ids": [0, 1]}


def test_slurm_one_task_per_gpu_each_all_visible_takes_its_local_rank(launch):
  received = launch({**SLURM, "SLURM_LOCALID": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
                     "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  assert received["local_device_ids"] == [2]


def test_slurm_one_task_per_gpu_bound_by_slurm_takes_its_only_gpu(launch):
  """--gpus-per-task=1: SLURM shows each task one GPU, which is device 0 to that process."""
  received = launch({**SLURM, "SLURM_LOCALID": "3", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
                     "CUDA_VISIBLE_DEVICES": "3"})
  assert received["local_device_ids"] == [0]


def test_open_mpi_one_process_per_node_uses_all_gpus(launch):
  received = launch({**OPEN_MPI, "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                     "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
  assert received["local_device_ids"] == list(range(8))


def test_open_mpi_one_process_per_gpu_takes_its_local_rank(launch):
  received = launch({**OPEN_MPI, "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
                     "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
  assert received["local_device_ids"] == [1]


def test_explicit_flags_without_a_launcher_pass_through(launch):
  received = launch({}, "10.0.0.1:1234", 2, 0)
  assert received == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                      "process_id": 0, "local_device_ids": None}


@pytest.mark.parametrize("given,expected", [("0,2", [0, 2]), ([1], [1]), ("all", [0, 1, 2, 3])])
def test_local_device_ids_flag_wins(launch, given, expected):
  received = launch({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
                    local_device_ids=given)
  assert received["local_device_ids"] == expected


def test_environment_variable_overrides_the_launcher_default(launch):
  received = launch({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1",
                     sharding.LOCAL_DEVICE_IDS_ENV: "1"})
  assert received["local_device_ids"] == [1]


def test_bad_local_device_ids_are_a_config_error(launch):
  with pytest.raises(ConfigError, match="comma-separated integers"):
    launch({}, local_device_ids="first")


def test_already_joined_is_a_no_op(monkeypatch):
  monkeypatch.setattr(sharding.jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setattr(sharding.jax.distributed, "initialize",
                      lambda **kwargs: pytest.fail("joined twice"))
  sharding.initialize_distributed("10.0.0.1:1234", 2, 0)
