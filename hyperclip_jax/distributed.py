"""Multi-host start-up: `jax.distributed.initialize` from config.distributed and the environment, and the
check that this process sees every accelerator its scheduler gave it.

  config.distributed.mode = 'auto'   initialize when the environment says this is one of several processes:
                                     a coordinator address (config or JAX_COORDINATOR_ADDRESS), a SLURM job
                                     step with SLURM_NTASKS > 1, or a multi-host Cloud TPU VM
                                     (TPU_WORKER_HOSTNAMES lists several hosts); otherwise one process
                          'on'     always initialize (jax auto-detects TPU pods, Open MPI, k8s)
                          'off'    never: one process
  coordinator_address ('host:port'), num_processes and process_id are explicit settings for local
  multi-process runs (launch/local_multiprocess.sh); empty / 0 / -1 mean unset, and then the environment
  variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are used.
  allow_fewer_devices: start even when this process sees fewer accelerators than its scheduler assigned.

SLURM: one process per node drives all of the node's GPUs (launch/gpu_slurm.sbatch). jax's own SLURM
detection would give each process only GPU [SLURM_LOCALID], i.e. one GPU per node, so the settings for a
SLURM step are resolved here: coordinator = first host of the step's node list, port
HYPERCLIP_COORDINATOR_PORT (default: derived from the job id, as jax does), num_processes = SLURM_NTASKS,
process_id = SLURM_PROCID, local_device_ids = this task's share of the GPUs Slurm gave the node.

It must run before anything touches a jax device. On CPU the cross-process collectives use gloo.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
from jax._src import distributed as jax_distributed  # barrier(): no public equivalent in jax 0.10

from hyperclip_jax.config import ConfigError

MODES = ("auto", "on", "off")


def first_slurm_host(nodelist: str) -> str:
  """The first host name of a Slurm node list: 'gpu[003-010,012],login1' -> 'gpu003'."""
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
  if not match:
    raise ConfigError(f"SLURM node list {nodelist!r} is not understood; set config.distributed.coordinator_address")
  prefix, ranges = match.groups()
  if not ranges:
    return prefix
  return prefix + re.split(r"[,-]", ranges)[0]


def slurm_gpu_ids(env: dict[str, str]) -> list[int] | None:
  """The local device ids of this SLURM task: its share of the node's GPUs; None where no GPU was assigned."""
  visible = env.get("CUDA_VISIBLE_DEVICES", "")
  n_visible = len([d for d in visible.split(",") if d.strip()]) if visible else 0
  n_node = int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
  n = n_visible or n_node
  if n == 0:
    return None
  tasks_here = _tasks_on_this_node(env)
  if tasks_here <= 1 or n_visible == 1:  # one task per node, or Slurm bound one GPU to this task
    return list(range(n))
  share = n // tasks_here
  local = int(env.get("SLURM_LOCALID", "0") or 0)
  return list(range(local * share, (local + 1) * share))


def _tasks_on_this_node(env: dict[str, str]) -> int:
  """SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE look like '2(x3),1': this node's entry."""
  spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
  counts = []
  for part in spec.split(","):
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if m:
      counts += [int(m.group(1))] * int(m.group(2) or 1)
  node = int(env.get("SLURM_NODEID", "0") or 0)
  return counts[node] if 0 <= node < len(counts) else (counts[0] if counts else 1)


def _slurm_settings(env: dict[str, str]) -> dict[str, Any]:
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
  if not nodelist:
    raise ConfigError("a SLURM job step with several tasks but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST; "
                      "start the trainer with srun, or set config.distributed.coordinator_address")
  port = env.get("HYPERCLIP_COORDINATOR_PORT") or str(61440 + int(env["SLURM_JOB_ID"]) % 4096)
  kwargs = {"coordinator_address": f"{first_slurm_host(nodelist)}:{port}",
            "num_processes": int(env["SLURM_NTASKS"]), "process_id": int(env.get("SLURM_PROCID", "0"))}
  ids = slurm_gpu_ids(env)
  if ids is not None:
    kwargs["local_device_ids"] = ids
  return kwargs


def settings(dist_cfg: Any, environ: dict[str, str] | None = None) -> dict[str, Any] | None:
  """The explicit initialize() arguments, {} for pure auto-detection, or None for a single process."""
  env = os.environ if environ is None else environ
  mode = dist_cfg.mode
  if mode not in MODES:
    raise ConfigError(f"config.distributed.mode={mode!r} is unknown; known: {', '.join(MODES)}")
  if mode == "off":
    return None
  address = dist_cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  num = dist_cfg.num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = dist_cfg.process_id if dist_cfg.process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
  if address:
    if num < 1 or not 0 <= pid < num:
      raise ConfigError(
          f"config.distributed: coordinator_address={address!r} needs num_processes >= 1 and 0 <= process_id < "
          f"num_processes (got {num}, {pid}); set them or JAX_NUM_PROCESSES / JAX_PROCESS_ID")
    return {"coordinator_address": address, "num_processes": num, "process_id": pid}
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return _slurm_settings(env)
  tpu_pod = "," in env.get("TPU_WORKER_HOSTNAMES", "")
  if mode == "on" or tpu_pod:
    return {}
  return None


def initialize(dist_cfg: Any) -> dict[str, Any] | None:
  """Calls jax.distributed.initialize when this run is one of several processes; returns the settings it
  passed (None: one process, or already initialized)."""
  kwargs = settings(dist_cfg)
  if kwargs is None or jax.distributed.is_initialized():
    return None
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or kwargs.get("coordinator_address"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
  jax.distributed.initialize(**kwargs)
  return kwargs


# Accelerators per chip family as jax counts devices: TPU v4 / v5p chips are one device each (megacore) while
# their accelerator type counts TensorCores (v4-32 = 16 chips); v5e / v6e types count chips.
_TPU_CORES_PER_DEVICE = {"v2": 1, "v3": 1, "v4": 2, "v5p": 2, "v5litepod": 1, "v5e": 1, "v6e": 1}


def assigned_local_devices(environ: dict[str, str] | None = None) -> tuple[int, str] | None:
  """(number of accelerators the scheduler gave this process, where that number comes from), or None where
  the environment does not say (a laptop, a plain CPU run)."""
  env = os.environ if environ is None else environ
  if "SLURM_JOB_ID" in env:
    ids = slurm_gpu_ids(env)
    if ids is not None:
      return len(ids), ("CUDA_VISIBLE_DEVICES" if env.get("CUDA_VISIBLE_DEVICES") else "SLURM_GPUS_ON_NODE")
  accelerator = env.get("TPU_ACCELERATOR_TYPE", "")  # e.g. 'v4-32', 'v5litepod-16', set on Cloud TPU VMs
  m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator)
  if m and m.group(1) in _TPU_CORES_PER_DEVICE:
    hosts = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) or 1
    devices = int(m.group(2)) // _TPU_CORES_PER_DEVICE[m.group(1)]
    return max(devices // hosts, 1), f"TPU_ACCELERATOR_TYPE={accelerator} over {hosts} host(s)"
  return None


def check_local_devices(allow_fewer: bool, environ: dict[str, str] | None = None) -> None:
  """Raises ConfigError when this process sees fewer devices than its scheduler assigned (e.g. a CUDA-less
  jaxlib that fell back to CPU, or jax's one-GPU-per-process SLURM default), unless allow_fewer."""
  assigned = assigned_local_devices(environ)
  seen = jax.local_device_count()
  if assigned is None or seen >= assigned[0] or allow_fewer:
    return
  raise ConfigError(
      f"process {jax.process_index()} sees {seen} local {jax.default_backend()} device(s) but was assigned "
      f"{assigned[0]} ({assigned[1]}); install the matching jax[cuda]/jax[tpu], check the launcher, or pass "
      "--config.distributed.allow_fewer_devices=true if this is intended")


def topology(mesh: jax.sharding.Mesh, kwargs: dict[str, Any] | None) -> dict[str, Any]:
  """What this process runs on: the start-up banner, also written to WORKDIR/run_info.json."""
  local = jax.local_devices()
  info = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "local_devices": len(local), "global_devices": jax.device_count(), "platform": jax.default_backend(),
          "device_kind": local[0].device_kind if local else "", "mesh": dict(mesh.shape)}
  if kwargs:
    info["distributed"] = {k: v for k, v in kwargs.items()}
  return info


def banner(info: dict[str, Any]) -> str:
  """One log line: `topology: process 0/2 | local devices 8 ... | mesh data=16 fsdp=1 | ...`."""
  mesh = " ".join(f"{k}={v}" for k, v in info["mesh"].items())
  parts = [f"process {info['process_index']}/{info['process_count']}",
           f"local devices {info['local_devices']} x {info['platform']} ({info['device_kind']})",
           f"global devices {info['global_devices']}", f"mesh {mesh}"]
  for key, value in info.get("distributed", {}).items():
    parts.append(f"{key}={value}")
  return "topology: " + " | ".join(parts)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches `name` (through the coordination service; no-op in one process).

  Gloo gives processes only 30 s to meet at their first collective; a barrier with a long timeout keeps
  uneven start-up or compile times (a loaded host) from failing the run. jax has no public barrier of this
  kind, so this uses the distributed client directly.
  """
  if jax.process_count() == 1:
    return
  jax_distributed.global_state.client.wait_at_barrier(f"hyperclip_{name}", timeout_s * 1000)
