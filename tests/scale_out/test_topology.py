"""What the trainer hands jax.distributed under SLURM and on TPU VMs, and the refusal of a process that sees
fewer accelerators than its scheduler assigned. The two-process run is tests/scale_out/test_slurm_run.py."""
import jax
import pytest
import scale_helpers as h

from hyperclip_jax import distributed


def _slurm(**extra):
  env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "0",
         "SLURM_NODEID": "3", "SLURM_STEP_NODELIST": "gpu[007-010]", "SLURM_TASKS_PER_NODE": "1(x4)",
         "SLURM_GPUS_ON_NODE": "8"}
  return {**env, **extra}


@pytest.mark.parametrize("nodelist, first", [("gpu007", "gpu007"), ("gpu007,login2", "gpu007"),
                                             ("gpu[007-010]", "gpu007"), ("a[3,5-9],b1", "a3"),
                                             ("node-[12-13]", "node-12")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
  assert distributed.first_slurm_host(nodelist) == first


def test_one_process_per_node_drives_every_gpu_of_its_node():
  got = distributed.settings(h.tiny_config().distributed, _slurm())
  # jax's own SLURM detection would pass local_device_ids=[SLURM_LOCALID] = [0]: one GPU per node
  assert got == {"coordinator_address": f"gpu007:{61440 + 4242 % 4096}", "num_processes": 4, "process_id": 3,
                 "local_device_ids": list(range(8))}
  got = distributed.settings(h.tiny_config().distributed,
                             _slurm(HYPERCLIP_COORDINATOR_PORT="29511", CUDA_VISIBLE_DEVICES="0,1,2,3"))
  assert got["coordinator_address"] == "gpu007:29511" and got["local_device_ids"] == [0, 1, 2, 3]


def test_several_tasks_per_node_split_the_nodes_gpus():
  env = _slurm(SLURM_NTASKS="8", SLURM_TASKS_PER_NODE="2(x4)", SLURM_LOCALID="1", SLURM_NODEID="2")
  assert distributed.settings(h.tiny_config().distributed, env)["local_device_ids"] == [4, 5, 6, 7]
  bound = {**env, "CUDA_VISIBLE_DEVICES": "5"}  # --gpus-per-task=1: Slurm binds one GPU to the task
  assert distributed.settings(h.tiny_config().distributed, bound)["local_device_ids"] == [0]


def test_cpu_only_slurm_steps_pass_no_device_ids_and_single_tasks_stay_single():
  env = {k: v for k, v in _slurm().items() if k != "SLURM_GPUS_ON_NODE"}
  assert "local_device_ids" not in distributed.settings(h.tiny_config().distributed, env)
  assert distributed.settings(h.tiny_config().distributed, _slurm(SLURM_NTASKS="1")) is None


def test_assigned_devices_from_slurm_and_tpu_topology():
  assert distributed.assigned_local_devices({}) is None
  assert distributed.assigned_local_devices(_slurm())[0] == 8
  tpu = {"TPU_ACCELERATOR_TYPE": "v4-32", "TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}
  assert distributed.assigned_local_devices(tpu)[0] == 4  # 16 chips (v4 counts TensorCores) over 4 hosts
  tpu = {"TPU_ACCELERATOR_TYPE": "v5litepod-16", "TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}
  assert distributed.assigned_local_devices(tpu)[0] == 4
  assert distributed.assigned_local_devices({"TPU_ACCELERATOR_TYPE": "v6e-8"})[0] == 8


def test_a_process_seeing_fewer_devices_than_assigned_is_refused():
  assert jax.local_device_count() == 8
  distributed.check_local_devices(False, _slurm())  # 8 assigned, 8 seen
  with pytest.raises(distributed.ConfigError, match=r"sees 8 local cpu device\(s\) but was assigned 16 "
                     r"\(SLURM_GPUS_ON_NODE\).*allow_fewer_devices=true") as e:
    distributed.check_local_devices(False, _slurm(SLURM_GPUS_ON_NODE="16"))
  assert "\n" not in str(e.value)
  distributed.check_local_devices(True, _slurm(SLURM_GPUS_ON_NODE="16"))  # intended: allowed


def test_banner_names_processes_devices_mesh_and_settings():
  mesh = h.mesh_of(4, 2)
  info = distributed.topology(mesh, {"coordinator_address": "gpu007:29511", "local_device_ids": [0, 1]})
  line = distributed.banner(info)
  assert line.startswith("topology: process 0/1 | local devices 8 x cpu (cpu) | global devices 8 | ")
  assert "mesh data=4 fsdp=2" in line and "local_device_ids=[0, 1]" in line
